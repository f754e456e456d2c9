"""Analysis tools: what the channel-attention blocks see, and where the models look.

Two views of trained classification checkpoints, as in the CSA-Net paper:

- ``descriptors`` (the paper's Figures 3 and 5): at the last block of each stage, the per-channel
  z (standardised GAP), q (standardised local Moran's I) and gate weights p of the block's last BN
  output (the gate's input; read whether or not the block has a gate), averaged over the images,
  channels sorted by q ascending, curves smoothed by an exponential moving average.
  z and p come from the gate's own ``descriptors``; q from the gate's own ``autocorrelation`` for
  CSA and from :func:`~csa_lightning.attention.csa.spatial_autocorrelation` with its defaults for
  every other block (q needs no learnt parameters), so the math exists once.
- ``gradcam`` (Figures 4 and 6): Grad-CAM (the ``grad-cam`` package) at the last stage of each
  model, as a grid: rows are images, columns the input and each model.

    python -m csa_lightning.analyze descriptors --ckpt A.ckpt --ckpt B.ckpt --images DIR --out figs/
    python -m csa_lightning.analyze descriptors --ckpt A.ckpt --data configs/demo/digits_csa.yaml
    python -m csa_lightning.analyze gradcam --ckpt A.ckpt --ckpt B.ckpt --images DIR --out figs/

Images are preprocessed as the checkpoint's validation data was (side, centre-crop ratio, mean and
std from the data module's hyperparameters stored in the checkpoint; ``--size``, ``--crop-ratio``,
``--mean``, ``--std`` override). A folder of class sub-folders (torchvision's ImageFolder layout)
gives each image its class; Grad-CAM then explains the true class, otherwise the first model's
prediction.

The package: :mod:`.checkpoints` (loading, stages), :mod:`.images` (reading and preprocessing),
:mod:`.descriptors` (collection, smoothing, plots), :mod:`.gradcam`, :mod:`.cli` (the command line).
"""

from .checkpoints import AnalysedModel, last_bn, load_checkpoint_model, load_models, parse_blocks, stage_blocks
from .cli import build_parser, main, run_descriptors, run_gradcam
from .descriptors import (
    DESCRIPTOR_KEYS,
    block_descriptors,
    collect_descriptors,
    collect_descriptors_of,
    ema,
    plot_descriptors,
    save_descriptors,
    sort_order,
)
from .gradcam import choose_cam_stage, gradcam_figure, gradcam_maps, plot_gradcam, stage_map_sizes
from .images import (
    IMAGE_SUFFIXES,
    ImageBatch,
    Preprocessing,
    datamodule_batches,
    datamodule_from_config,
    find_images,
    image_folder_batches,
)

__all__ = [
    "AnalysedModel",
    "ImageBatch",
    "Preprocessing",
    "load_checkpoint_model",
    "load_models",
    "stage_blocks",
    "last_bn",
    "parse_blocks",
    "find_images",
    "image_folder_batches",
    "datamodule_from_config",
    "datamodule_batches",
    "block_descriptors",
    "collect_descriptors",
    "collect_descriptors_of",
    "ema",
    "sort_order",
    "save_descriptors",
    "plot_descriptors",
    "stage_map_sizes",
    "choose_cam_stage",
    "gradcam_maps",
    "gradcam_figure",
    "plot_gradcam",
    "build_parser",
    "main",
    "run_descriptors",
    "run_gradcam",
    "DESCRIPTOR_KEYS",
    "IMAGE_SUFFIXES",
]
