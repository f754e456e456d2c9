"""The uint8 decode-and-augment path of ImageFolder and LitData: the same pixels as PIL where it
decodes, the same random crops as torchvision's PIL pipeline (within one grey level), DCT scaling
within its stated contract, errors naming the file, and batches normalised on the device."""

import numpy as np
import pytest
import torch
from PIL import Image

from csa_lightning.data.image_io import open_rgb
from csa_lightning.data.uint8_pipeline import (
    RandomResizedCropUint8,
    ResizeCenterCropUint8,
    dct_factor,
    decode_uint8,
    jpeg_size,
    psnr,
)

from .sample_images import JPEG_KINDS, encoded, photo, photo_tree


def _hwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("kind", list(JPEG_KINDS))
def test_jpegs_decode_to_the_pixels_pil_gives(kind):
    data = JPEG_KINDS[kind](Image.fromarray(photo()[:120, :160]))
    assert np.array_equal(_hwc(decode_uint8(data)), np.asarray(open_rgb(data)))
    # YCbCr and greyscale JPEGs take the fast decoder; CMYK keeps PIL's conversion
    assert (jpeg_size(data) is None) == (kind == "CMYK")


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGBA", "LA", "I;16"])
def test_other_files_keep_open_rgbs_pixels(tmp_path, mode):
    base = Image.fromarray(photo()[:40, :50])
    image = base.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(base)[..., 0].astype("<u2") * 257)
    path = tmp_path / "image.png"
    image.save(path)
    assert np.array_equal(_hwc(decode_uint8(str(path))), np.asarray(open_rgb(path)))


def test_training_crops_match_torchvisions_pil_pipeline_within_one_grey_level():
    from torchvision import transforms as T

    data = encoded(Image.fromarray(photo(1)), quality=90)
    old = T.Compose([T.RandomResizedCrop(96), T.RandomHorizontalFlip()])
    new = RandomResizedCropUint8(96, dct_scaling=False)
    for seed in range(8):
        torch.manual_seed(seed)
        expected = torch.from_numpy(np.array(old(open_rgb(data)))).permute(2, 0, 1)
        torch.manual_seed(seed)
        crop = new(data)
        assert crop.dtype == torch.uint8 and crop.shape == (3, 96, 96)
        assert (crop.int() - expected.int()).abs().max() <= 1  # the same draws: the same crop and flip


def test_validation_crops_match_torchvisions_pil_pipeline_within_one_grey_level():
    from torchvision import transforms as T

    data = encoded(Image.fromarray(photo(0)), quality=90)
    expected = torch.from_numpy(np.array(T.Compose([T.Resize(110), T.CenterCrop(96)])(open_rgb(data))))
    crop = ResizeCenterCropUint8(96, 110, dct_scaling=False)(data)
    assert (crop.int() - expected.permute(2, 0, 1).int()).abs().max() <= 1


def test_dct_factor_applies_only_from_twice_the_output():
    assert dct_factor((447, 447), (224, 224)) == 1
    assert dct_factor((448, 900), (224, 224)) == 2
    assert dct_factor((1800, 1800), (224, 224)) == 8
    assert dct_factor((1800, 300), (224, 224)) == 1


@pytest.mark.parametrize("index", [0, 1])
def test_dct_scaling_keeps_its_psnr_contract_against_full_decoding(index):
    """The contract docs/data-loading.md states: at least 30 dB against full decode, crop and resize
    of the same crop (the photos at their native 427 x 640, outputs small enough for DCT scaling)."""
    from csa_lightning.data.uint8_pipeline import _resize

    data = encoded(Image.fromarray(photo(index)), quality=90)
    full = decode_uint8(data)
    scaled, worst = 0, np.inf
    for out in (64, 100):
        transform = RandomResizedCropUint8(out, flip=False)
        for seed in range(16):
            torch.manual_seed(seed)
            top, left, height, width, factor = transform.draw(tuple(full.shape[1:]))
            torch.manual_seed(seed)
            crop = transform(data)
            reference = _resize(full[:, top : top + height, left : left + width], [out, out])
            scaled += factor > 1
            worst = min(worst, psnr(crop, reference))
            assert factor > 1 or torch.equal(crop, reference)
    assert scaled >= 8  # DCT scaling did apply
    assert worst >= 30.0
    full_size, reduced = (ResizeCenterCropUint8(64, 73, dct_scaling=dct)(data) for dct in (False, True))
    assert not torch.equal(full_size, reduced) and psnr(full_size, reduced) >= 30.0


def test_dct_scaling_moves_a_crop_by_less_than_half_its_reduction():
    transform = RandomResizedCropUint8(64, flip=False)
    plain = RandomResizedCropUint8(64, flip=False, dct_scaling=False)
    for seed in range(32):
        torch.manual_seed(seed)
        box = transform.draw((427, 640))
        torch.manual_seed(seed)
        drawn = plain.draw((427, 640))
        factor = box[4]
        assert drawn[4] == 1 and all(v % factor == 0 for v in box[:4])
        assert all(abs(a - b) <= factor / 2 for a, b in zip(box[:2], drawn[:2]))
        assert all(abs(a - b) <= factor for a, b in zip(box[2:4], drawn[2:4]))


def test_a_truncated_jpeg_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "cut.jpg"
    path.write_bytes(encoded(Image.fromarray(photo()), quality=90)[:5000])
    with pytest.raises(OSError, match="cut.jpg"):
        RandomResizedCropUint8(64)(str(path))
    with pytest.raises(OSError, match="gone.jpg"):
        decode_uint8(str(tmp_path / "gone.jpg"))


def test_a_jpeg_above_the_pixel_limit_is_refused_naming_the_variable(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    path.write_bytes(encoded(Image.fromarray(photo()[:64, :64]), quality=90))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(OSError, match="CSA_MAX_IMAGE_PIXELS=none"):
        ResizeCenterCropUint8(32, 36)(str(path))


def test_uint8_batches_are_normalised_on_the_device_as_the_pil_pipeline_normalises(tmp_path):
    from csa_lightning.data import ImageFolderDataModule

    root = photo_tree(tmp_path / "images")
    batches = {}
    for pipeline in ("uint8", "pil"):
        dm = ImageFolderDataModule(train_path=str(root), val_path=str(root), batch_size=4, num_workers=0,
                                   resolution=64, pipeline=pipeline, dct_scaling=False)  # fmt: skip
        dm.setup("fit")
        images, labels = next(iter(dm.val_dataloader()))
        assert images.dtype == (torch.uint8 if pipeline == "uint8" else torch.float32)
        batches[pipeline] = dm.on_after_batch_transfer([images, labels], 0)
    uint8, pil = batches["uint8"], batches["pil"]
    assert uint8[0].dtype == torch.float32 and uint8[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(uint8[1], pil[1])
    assert (uint8[0] - pil[0]).abs().max() <= 1.01 / 255 / min(dm.std)  # one grey level at most


def test_pipeline_and_dct_scaling_are_checked(capsys):
    from csa_lightning.data import ImageFolderDataModule, LitDataModule

    with pytest.raises(ValueError, match="data.pipeline"):
        ImageFolderDataModule(pipeline="opencv")
    with pytest.raises(ValueError, match="data.dct_scaling"):
        LitDataModule(dct_scaling="yes")
