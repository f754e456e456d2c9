"""JPEGs decoded on the GPU with nvJPEG (``data.pipeline: nvjpeg``) in the training process.

CUDA cannot run in the loader's workers, so they only read: each worker hands over the file's
bytes with the crop drawn from the header's size (the same draws as the uint8 pipeline,
`csa_lightning.data.uint8_pipeline`) and the flip; in the training process,
[`TorchvisionImageData.on_before_batch_transfer`][csa_lightning.data.TorchvisionImageData] decodes
the batch's JPEGs with one ``torchvision.io.decode_jpeg(list, device="cuda")`` call (nvJPEG, batched),
then crops, resizes (antialiased bilinear), flips and augments each image on the GPU. The CPU's
work per image becomes reading a file; the GPU's is a decode it does in parallel with nothing else
waiting on the loader.

Files nvJPEG is not given (PNG, TIFF, greyscale, CMYK and 16-bit images, anything whose header the
uint8 pipeline's check does not take as a YCbCr JPEG) are decoded and cropped in the worker by the
uint8 pipeline, so each image mode becomes what it becomes there. No DCT scaling (nvJPEG decodes at
full size) and no EXIF orientation (as the other pipelines). Pixels: nvJPEG's inverse DCT and chroma
upsampling are not libjpeg-turbo's, so a decoded image may differ from the CPU's by a few grey
levels; ``benchmarks/gpu_check.py`` measures the difference and the rate on a GPU.

``decode_batch`` takes any device: on the CPU, torchvision's decoder is libjpeg-turbo (the tests
check this path's crops against the uint8 pipeline's there); the data module refuses a device
that is not CUDA, since decoding in the training process on the CPU is slower than in workers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch

from ..errors import UsageError, first_line
from .uint8_pipeline import RandomResizedCropUint8, ResizeCenterCropUint8, Source, _bytes, _resize, jpeg_header

__all__ = ["EncodedJpeg", "DeferredRandomResizedCrop", "DeferredResizeCenterCrop", "collate_deferred",
           "decode_batch", "require_cuda"]  # fmt: skip

#: the colour space nvJPEG is given (a three-component JPEG: the common photo)
DEVICE_COLORSPACE = "YCbCr"


@dataclass
class EncodedJpeg:
    """One image as a worker hands it over: the file's bytes and what to do with them on the device.

    Attributes:
        data: the JPEG file's bytes, a uint8 1-D tensor.
        name: the file (for an error that names it).
        size: the output side.
        box: training: the crop ``(top, left, height, width)`` in the image's pixels; None: evaluation.
        flip: training: flip horizontally after the crop.
        resize: evaluation: the shorter side before the centre crop.
    """

    data: torch.Tensor
    name: str
    size: int
    box: Optional[Tuple[int, int, int, int]] = None
    flip: bool = False
    resize: Optional[int] = None


def _device_size(data: bytes) -> Optional[Tuple[int, int]]:
    """``(height, width)`` of a JPEG nvJPEG is given (a YCbCr JPEG the uint8 pipeline's header check
    takes), else None."""
    header = jpeg_header(data)
    return header[:2] if header is not None and header[2] == DEVICE_COLORSPACE else None


def _as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


class DeferredRandomResizedCrop:
    """Training, in a worker: a JPEG -> `EncodedJpeg` with its crop and flip drawn; any other file ->
    the uint8 pipeline's crop (`csa_lightning.data.uint8_pipeline.RandomResizedCropUint8`).

    Args:
        size: the output side.
        scale: the crop's area range (fraction of the image).
        ratio: the crop's aspect-ratio range.
        flip: a random horizontal flip.
        auto_augment: "trivial": TrivialAugmentWide (on the device for JPEGs; see `decode_batch`).
    """

    def __init__(self, size: int, scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 flip: bool = True, auto_augment: Optional[str] = None) -> None:  # fmt: skip
        self.on_cpu = RandomResizedCropUint8(size, scale, ratio, flip, auto_augment, dct_scaling=False)

    def __call__(self, source: Source, name: Optional[str] = None) -> Union[EncodedJpeg, torch.Tensor]:
        data, name = _bytes(source, name)
        size = _device_size(data)
        if size is None:
            return self.on_cpu(data, name)
        top, left, height, width, _ = self.on_cpu.draw(size, scalable=False)
        flip = bool(self.on_cpu.flip and torch.rand(1) < 0.5)
        return EncodedJpeg(_as_tensor(data), name, self.on_cpu.size, box=(top, left, height, width), flip=flip)


class DeferredResizeCenterCrop:
    """Evaluation, in a worker: a JPEG -> `EncodedJpeg` (shorter side to ``resize``, centre crop of
    ``size``, on the device); any other file -> the uint8 pipeline's
    (`csa_lightning.data.uint8_pipeline.ResizeCenterCropUint8`)."""

    def __init__(self, size: int, resize: int) -> None:
        self.on_cpu = ResizeCenterCropUint8(size, resize, dct_scaling=False)

    def __call__(self, source: Source, name: Optional[str] = None) -> Union[EncodedJpeg, torch.Tensor]:
        data, name = _bytes(source, name)
        if _device_size(data) is None:
            return self.on_cpu(data, name)
        return EncodedJpeg(_as_tensor(data), name, self.on_cpu.size, resize=self.on_cpu.resize)


class DeferredImages(list):
    """A batch's images as the workers handed them over (`EncodedJpeg` or uint8 ``(3, S, S)``), for
    `decode_batch`."""


def collate_deferred(batch):
    """The loaders' collate function with ``pipeline: nvjpeg``: the images kept as a `DeferredImages`
    list, the rest (labels, indices) collated by torch's ``default_collate``."""
    from torch.utils.data import default_collate

    rest = default_collate([tuple(item[1:]) for item in batch])
    return [DeferredImages(item[0] for item in batch), *rest]


def _decode_jpegs(items: List[EncodedJpeg], device: torch.device) -> List[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec; this is the
        # nvJPEG binding the pinned torchvision has
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return decode_jpeg([i.data for i in items], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            pass  # one file in the batch is bad: decode one by one to name it
        images = []
        for item in items:
            try:
                images.append(decode_jpeg(item.data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError as err:
                raise OSError(
                    f"cannot decode image {item.name} on {device} ({first_line(err)}); replace or remove the file"
                ) from None
        return images


def decode_batch(images: Sequence[Union[EncodedJpeg, torch.Tensor]], device: Union[str, torch.device],
                 augment=None) -> torch.Tensor:  # fmt: skip
    """A batch of `EncodedJpeg` and already-cropped uint8 images -> uint8 ``(B, 3, S, S)`` on
    ``device`` (S: the images' output side): the JPEGs decoded there in one batched call, then each cropped and resized
    (antialiased bilinear), flipped, and passed through ``augment`` (training) or resized and
    centre-cropped (evaluation)."""
    from torchvision.transforms.v2 import functional as F

    device = torch.device(device)
    first = images[0]
    size = first.size if isinstance(first, EncodedJpeg) else first.shape[-1]
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=device)
    encoded = [(i, image) for i, image in enumerate(images) if isinstance(image, EncodedJpeg)]
    decoded = _decode_jpegs([item for _, item in encoded], device) if encoded else []
    for (i, item), image in zip(encoded, decoded):
        if item.box is not None:
            top, left, height, width = item.box
            crop = _resize(image[:, top : top + height, left : left + width], [size, size])
            if item.flip:
                crop = crop.flip(-1)
            if augment is not None:
                crop = augment(crop)
        else:
            crop = F.center_crop(_resize(image, item.resize), [size, size])
        out[i] = crop
    for i, done in enumerate(images):
        if not isinstance(done, EncodedJpeg):
            out[i] = done.to(device, non_blocking=True)
    return out


def require_cuda(device: Optional[torch.device] = None) -> None:
    """One line when nvJPEG cannot run: no CUDA here, or the trainer's ``device`` is not a GPU."""
    fix = "use data.pipeline 'uint8' (the default: decoding in the loader's workers)"
    if not torch.cuda.is_available():
        raise UsageError(f"data.pipeline 'nvjpeg' decodes on a CUDA GPU and torch sees none here; {fix}")
    if device is not None and device.type != "cuda":
        raise UsageError(f"data.pipeline 'nvjpeg' decodes on a CUDA GPU but the trainer runs on {device}; "
                         f"give trainer.accelerator gpu or {fix}")  # fmt: skip
