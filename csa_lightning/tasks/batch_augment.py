"""Augmentations applied to a training batch, on whatever device it arrives (FFCV's GPU batches
included): random erasing per image, then MixUp or CutMix (one of the two per batch), with
torchvision.transforms.v2's own transforms, as torchvision's classification reference uses them.
"""

from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor

from ..checks import require

__all__ = ["BatchAugment"]


class BatchAugment:
    """``(images, labels) -> (images, targets)``; targets are the labels as given when nothing
    mixes, else soft (N, classes) float targets (cross-entropy takes either).

    Args:
        num_classes: classes of the labels.
        mixup_alpha: MixUp's Beta(alpha, alpha) (0: off).
        cutmix_alpha: CutMix's Beta(alpha, alpha) (0: off). With both on, each batch gets one of
            the two, chosen with probability 1/2 (torchvision's reference).
        random_erasing: probability that an image gets a random rectangle erased (to 0, the mean
            after normalisation); each image draws its own rectangle.
    """

    def __init__(
        self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, random_erasing: float = 0.0
    ) -> None:
        from torchvision.transforms import v2

        require(mixup_alpha >= 0, "model.mixup_alpha", mixup_alpha, ">= 0")
        require(cutmix_alpha >= 0, "model.cutmix_alpha", cutmix_alpha, ">= 0")
        require(0 <= random_erasing <= 1, "model.random_erasing", random_erasing, "in [0, 1]")
        mixers = []
        if mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        self.mix: Optional[v2.Transform] = v2.RandomChoice(mixers) if len(mixers) > 1 else (mixers or [None])[0]
        self.erase = v2.RandomErasing(p=random_erasing, value=0) if random_erasing > 0 else None

    @property
    def active(self) -> bool:
        return self.mix is not None or self.erase is not None

    def __call__(self, images: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor]:
        if self.erase is not None:
            # one draw per image: v2.RandomErasing on a batch erases one rectangle for the whole batch
            images = images.clone()
            for i in range(images.shape[0]):
                images[i] = self.erase(images[i])
        if self.mix is not None:
            images, labels = self.mix(images, labels)
        return images, labels
