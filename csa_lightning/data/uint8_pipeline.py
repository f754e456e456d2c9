"""The uint8 decode-and-augment path of the ImageFolder and LitData modules (``data.pipeline: uint8``).

An image file's bytes become a uint8 ``(3, H, W)`` tensor in the loader's workers; batches travel
between processes and to the device as uint8 (a quarter of float32's bytes), and the data module
normalises them on the device
([`TorchvisionImageData.on_after_batch_transfer`][csa_lightning.data.TorchvisionImageData]), as
the FFCV path does on a GPU.

- **Decoding.** JPEGs in YCbCr or greyscale decode with libjpeg-turbo through ``simplejpeg``, with
  libjpeg's default (accurate) DCT and upsampling: the same pixels as PIL, which is built on the
  same library (a test compares them), at about 1.5x PIL's rate (``benchmarks/loader_throughput.py``
  measures both). Every other file (PNG, TIFF, CMYK JPEGs, 16-bit images, anything the header check
  does not recognise) goes through `csa_lightning.data.image_io.open_rgb`, so each image mode
  becomes what it became before; neither path applies EXIF orientation (PIL's ``open`` does not).
- **Crop before decode.** The training crop is drawn (torchvision's ``RandomResizedCrop.get_params``,
  the same random draws as the PIL path) from the size the header states; crop and resize run on
  the uint8 tensor with torchvision's antialiased bilinear resize.
- **DCT scaling** (``dct_scaling``, on by default; off: every image is decoded at full size). When
  the crop is at least twice the output on both sides (validation: the shorter side at least twice
  the resize target), libjpeg decodes at 1/2, 1/4 or 1/8 scale directly from the DCT
  coefficients, the largest reduction that keeps the crop at least as large as the output. It
  changes pixels: the contract, checked by a test on the sample photos at their native sizes, is
  a PSNR of at least 30 dB against full decode, crop and resize of the same crop (measured figures
  in docs/data-loading.md). On ImageNet-sized photos (about 500 x 375) it rarely applies.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .image_io import open_rgb

__all__ = [
    "decode_uint8",
    "jpeg_header",
    "jpeg_size",
    "RandomResizedCropUint8",
    "ResizeCenterCropUint8",
    "collate_uint8",
    "dct_factor",
    "psnr",
]

Source = Union[str, Path, bytes, bytearray, memoryview]

#: JPEG colour spaces decoded by libjpeg-turbo directly (CMYK and YCCK keep PIL's conversion)
DIRECT_COLORSPACES = ("YCbCr", "Gray")
#: the reductions DCT scaling may use: libjpeg's fast scaled inverse DCTs
DCT_FACTORS = (8, 4, 2)


def _bytes(source: Source, name: Optional[str]) -> Tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name or "an image's bytes"
    try:
        return Path(source).read_bytes(), name or str(source)
    except OSError as err:
        raise OSError(f"cannot read image {name or source} ({err.strerror or err})") from None


def jpeg_header(data: bytes) -> Optional[Tuple[int, int, str]]:
    """``(height, width, colour space)`` from a JPEG's header when the fast decoder takes the file (a
    YCbCr or greyscale JPEG within PIL's pixel limit), else None (the file goes through ``open_rgb``)."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    import simplejpeg
    from PIL import Image

    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:  # a header libjpeg rejects: PIL names the problem
        return None
    if colorspace not in DIRECT_COLORSPACES:
        return None
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and height * width > limit:  # open_rgb warns or refuses, naming the variable
        return None
    return height, width, colorspace


def jpeg_size(data: bytes) -> Optional[Tuple[int, int]]:
    """``(height, width)`` of a JPEG the fast decoder takes (`jpeg_header`), else None."""
    header = jpeg_header(data)
    return None if header is None else header[:2]


def dct_factor(crop: Tuple[int, int], output: Tuple[int, int]) -> int:
    """The largest of 8, 4, 2 by which a ``crop`` (height, width) can shrink and stay at least
    ``output`` on both sides; 1 when the crop is less than twice the output."""
    for factor in DCT_FACTORS:
        if crop[0] >= factor * output[0] and crop[1] >= factor * output[1]:
            return factor
    return 1


def decode_uint8(source: Source, name: Optional[str] = None, factor: int = 1) -> torch.Tensor:
    """The image at ``source`` (a path or the file's bytes) as a uint8 ``(3, H, W)`` tensor (HWC
    strides). ``factor`` 2, 4 or 8: a JPEG is decoded at that reduction (DCT scaling; other files at
    full size: compare the result's size). Errors name the file, as ``open_rgb``'s do."""
    data, name = _bytes(source, name)
    return _decode(data, name, jpeg_size(data), factor)


def _decode(data: bytes, name: str, size: Optional[Tuple[int, int]], factor: int) -> torch.Tensor:
    if size is not None:
        import simplejpeg

        try:
            pixels = simplejpeg.decode_jpeg(
                data, colorspace="RGB", min_height=-(-size[0] // factor), min_width=-(-size[1] // factor)
            )
        except ValueError:
            pixels = None  # truncated or corrupt: open_rgb refuses it with PIL's reason, naming the file
        if pixels is not None:
            return torch.from_numpy(pixels).permute(2, 0, 1)
    return torch.from_numpy(np.array(open_rgb(data, name=name))).permute(2, 0, 1)


def _resize(image: torch.Tensor, size) -> torch.Tensor:
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    return F.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)


class RandomResizedCropUint8:
    """Training: file -> random-resized crop (+ flip, + TrivialAugmentWide) as a uint8 tensor.

    Args:
        size: the output side.
        scale: the crop's area range (fraction of the image).
        ratio: the crop's aspect-ratio range.
        flip: a random horizontal flip.
        auto_augment: "trivial": TrivialAugmentWide on the uint8 crop.
        dct_scaling: decode JPEGs at a reduced scale when the crop allows (see the module).
    """

    def __init__(self, size: int, scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 flip: bool = True, auto_augment: Optional[str] = None, dct_scaling: bool = True) -> None:  # fmt: skip
        self.size, self.scale, self.ratio = int(size), [float(s) for s in scale], [float(r) for r in ratio]
        self.flip, self.dct_scaling = bool(flip), bool(dct_scaling)
        self.augment = None
        if auto_augment == "trivial":
            from torchvision.transforms import v2

            self.augment = v2.TrivialAugmentWide(interpolation=v2.InterpolationMode.BILINEAR)

    def draw(self, size: Tuple[int, int], scalable: bool = True) -> Tuple[int, int, int, int, int]:
        """A crop of an image of ``size`` (height, width): ``(top, left, height, width, factor)`` in
        the image's pixels, drawn as torchvision's ``RandomResizedCrop`` draws it (the same random
        numbers), and the DCT reduction it allows; with a reduction above 1 the crop's edges are
        moved to the nearest multiples of it (at most ``factor / 2`` pixels of a crop at least
        ``2 * factor`` times the output), so that the reduced image holds exactly that crop.
        ``scalable``: False for a file the fast decoder does not take (no reduction)."""
        from torchvision.transforms import RandomResizedCrop

        # an expanded 1-element tensor stands for the image: get_params reads only its size
        stand_in = torch.empty((1, 1, 1), dtype=torch.uint8).expand(1, *size)
        top, left, height, width = RandomResizedCrop.get_params(stand_in, self.scale, self.ratio)
        factor = dct_factor((height, width), (self.size, self.size)) if self.dct_scaling and scalable else 1
        if factor > 1:
            top, left = round(top / factor), round(left / factor)
            height = min(round(height / factor), size[0] // factor - top)
            width = min(round(width / factor), size[1] // factor - left)
            top, left, height, width = (factor * v for v in (top, left, height, width))
        return top, left, height, width, factor

    def __call__(self, source: Source, name: Optional[str] = None) -> torch.Tensor:
        data, name = _bytes(source, name)
        size = jpeg_size(data)
        if size is None:  # not for the fast decoder: decode first, the size comes from the pixels
            image = _decode(data, name, None, 1)
            top, left, height, width, factor = self.draw((image.shape[1], image.shape[2]), scalable=False)
        else:
            top, left, height, width, factor = self.draw(size)
            image = _decode(data, name, size, factor)
            factor = factor if image.shape[1] < size[0] else 1  # (PIL decoded it after libjpeg refused)
        top, left, height, width = (v // factor for v in (top, left, height, width))
        crop = _resize(image[:, top : top + height, left : left + width], [self.size, self.size])
        if self.flip and torch.rand(1) < 0.5:
            crop = crop.flip(-1)
        if self.augment is not None:
            crop = self.augment(crop)
        return crop


class ResizeCenterCropUint8:
    """Evaluation: file -> shorter side resized to ``resize``, centre crop of ``size``, as uint8.

    Args:
        size: the centre crop's side.
        resize: the shorter side before the crop (``size / val_crop_ratio``).
        dct_scaling: decode JPEGs at a reduced scale when the shorter side is at least twice
            ``resize`` (see the module).
    """

    def __init__(self, size: int, resize: int, dct_scaling: bool = True) -> None:
        self.size, self.resize, self.dct_scaling = int(size), int(resize), bool(dct_scaling)

    def __call__(self, source: Source, name: Optional[str] = None) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        data, name = _bytes(source, name)
        size = jpeg_size(data)
        factor = 1
        if size is not None and self.dct_scaling:
            shorter = min(size)
            factor = dct_factor((shorter, shorter), (self.resize, self.resize))
        image = _decode(data, name, size, factor)
        return F.center_crop(_resize(image, self.resize), [self.size, self.size])


def collate_uint8(batch):
    """torch's ``default_collate`` with the uint8 images stacked as ``(B, H, W, 3)`` (a plain copy of
    each image's HWC pixels into the worker's shared memory, where ``(B, 3, H, W)`` is a transposing
    one) and returned as a ``(B, 3, H, W)`` view with channels_last strides."""
    from torch.utils.data import default_collate

    first = batch[0][0]
    if not (torch.is_tensor(first) and first.dtype == torch.uint8 and first.dim() == 3):
        return default_collate(batch)
    collated = default_collate([(item[0].permute(1, 2, 0), *item[1:]) for item in batch])
    return [collated[0].permute(0, 3, 1, 2), *collated[1:]]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio of two uint8 images in dB (inf when equal)."""
    error = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if error == 0 else 10 * math.log10(255.0**2 / error)
