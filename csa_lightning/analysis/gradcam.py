"""Grad-CAM (the ``grad-cam`` package) at the last block of a stage, for several models, as a grid
(the paper's Figures 4 and 6)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoints import stage_blocks
from .images import ImageBatch

__all__ = ["stage_map_sizes", "choose_cam_stage", "gradcam_maps", "gradcam_figure", "plot_gradcam"]


def stage_map_sizes(network: nn.Module, inputs: Tensor) -> List[Tuple[int, int]]:
    """(H, W) of each stage's output for ``inputs``."""
    sizes: Dict[int, Tuple[int, int]] = {}
    handles = [
        stage.register_forward_hook(lambda _m, _i, out, s=s: sizes.__setitem__(s, tuple(out.shape[-2:])))
        for s, stage in enumerate(stage_blocks(network))
    ]
    try:
        with torch.no_grad():
            network(inputs[:1])
    finally:
        for h in handles:
            h.remove()
    return [sizes[s] for s in range(len(sizes))]


def choose_cam_stage(network: nn.Module, inputs: Tensor, stage: Optional[int] = None) -> Tuple[int, str]:
    """The 1-based stage Grad-CAM reads, and a note when it is not the one asked for.

    Default: the last stage. Where its maps are 1 x 1 (ResNets on 32 px inputs), Grad-CAM is a
    constant, so the last stage with larger maps is used instead and the note says so.
    """
    sizes = stage_map_sizes(network, inputs)
    if stage is not None:
        if not 1 <= stage <= len(sizes):
            raise ValueError(f"--stage {stage} out of range: stages are 1..{len(sizes)}")
        return stage, ""
    last = len(sizes)
    if sizes[-1] != (1, 1):
        return last, ""
    larger = [s for s, hw in enumerate(sizes, start=1) if hw != (1, 1)]
    if not larger:
        raise ValueError(
            f"every stage's maps are 1 x 1 at input size {tuple(inputs.shape[-2:])}; use larger images (--size)"
        )
    chosen = larger[-1]
    return (
        chosen,
        f"layer{last} maps are 1x1 at {inputs.shape[-1]} px; "
        f"Grad-CAM at layer{chosen} ({sizes[chosen - 1][0]}x{sizes[chosen - 1][1]})",
    )


def gradcam_maps(
    network: nn.Module, inputs: Tensor, targets: Sequence[int], stage: int = 4
) -> Tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps (N, H, W) in 0..1 at the last block of ``stage`` (1-based) for the given
    classes, and the model's softmax probability for each (N,)."""
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        raise ValueError("Grad-CAM needs the grad-cam package: pip install 'csa-lightning[analysis]'") from None

    network.eval()
    target_layer = stage_blocks(network)[stage - 1][-1]
    with torch.no_grad():
        probs = network(inputs).float().softmax(dim=1)
    num_classes = probs.shape[1]
    bad = [t for t in targets if not 0 <= t < num_classes]
    if bad:
        raise ValueError(
            f"target classes {bad} out of range for a model with {num_classes} classes; "
            "check the image folder's classes"
        )
    with GradCAM(model=network, target_layers=[target_layer]) as cam:
        maps = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    chosen = probs[torch.arange(len(targets)), torch.as_tensor(list(targets))]
    return np.asarray(maps), chosen.numpy()


def gradcam_figure(
    batch: ImageBatch,
    targets: Sequence[int],
    maps: Dict[str, np.ndarray],
    probs: Dict[str, np.ndarray],
    class_names: Sequence[str] = (),
    title: str = "",
):
    """Grid of rows = images, columns = the input and each model's Grad-CAM overlay; each model
    cell is titled with the target class and the model's probability for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pytorch_grad_cam.utils.image import show_cam_on_image

    def name(t: int) -> str:
        return class_names[t] if class_names and t < len(class_names) else str(t)

    rows, cols = len(targets), 1 + len(maps)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    for i, t in enumerate(targets):
        axes[i][0].imshow(batch.display[i])
        axes[i][0].set_title(f"class {name(batch.targets[i])}" if batch.targets is not None else "input", fontsize=8)
        for j, label in enumerate(maps, start=1):
            overlay = show_cam_on_image(batch.display[i].astype(np.float32), maps[label][i], use_rgb=True)
            axes[i][j].imshow(overlay)
            axes[i][j].set_title(f"{label}\n{name(t)}: p={probs[label][i]:.2f}", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def plot_gradcam(batch, targets, maps, probs, class_names, path: Path, title: str = "") -> Path:
    """Save the Grad-CAM grid (rows images, columns input and each model) as ``path``."""
    import matplotlib.pyplot as plt

    fig = gradcam_figure(batch, targets, maps, probs, class_names, title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
