"""One image-opening function for ImageFolder, the beton writer, COCO and analysis: high-depth
images scaled by their bit depth or range, never clipped; other modes as torchvision's loader
converts them (issue: nothing silently wrong; 16-bit PNGs were saturated, float images black)."""

import numpy as np
import pytest
from PIL import Image

from csa_lightning.data.image_io import open_rgb, to_rgb

DIGIT = np.linspace(0, 1, 64).reshape(8, 8) ** 2  # a ramp, most of it well below the top


def _save(tmp_path, image, name):
    path = tmp_path / name
    image.save(path)
    return path


def test_a_16_bit_png_is_scaled_by_its_bit_depth(tmp_path):
    values = np.round(DIGIT * 65535).astype(np.uint16)
    path = _save(tmp_path, Image.fromarray(values), "deep.png")  # Pillow writes and reads it as I;16
    with Image.open(path) as raw:
        assert raw.mode in ("I;16", "I")
        saturated = np.asarray(raw.convert("RGB"))[..., 0]
    rgb = np.asarray(open_rgb(path))
    assert rgb.shape == (8, 8, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    assert np.abs(rgb[..., 0] - np.round(DIGIT * 255)).max() <= 1
    assert (rgb == 255).mean() < 0.05 and (saturated == 255).mean() > 0.5  # what convert("RGB") did


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16_bit_modes_in_memory(mode):
    values = np.round(DIGIT * 65535).astype(">u2" if mode == "I;16B" else "<u2")
    image = Image.frombytes(mode, (8, 8), values.tobytes())
    assert np.abs(np.asarray(to_rgb(image))[..., 1] - np.round(DIGIT * 255)).max() <= 1


def test_a_32_bit_integer_image_outside_16_bits_is_scaled_by_its_range():
    values = (DIGIT * 3e6 - 1e6).astype(np.int32)
    rgb = np.asarray(to_rgb(Image.fromarray(values, mode="I")))[..., 0]
    assert rgb.min() == 0 and rgb.max() == 255 and np.abs(rgb - np.round(DIGIT * 255)).max() <= 1


def test_float_images_are_scaled_by_their_range_never_black(tmp_path):
    unit = to_rgb(Image.fromarray(DIGIT.astype(np.float32), mode="F"))
    assert np.abs(np.asarray(unit)[..., 0] - np.round(DIGIT * 255)).max() <= 1
    wide = to_rgb(Image.fromarray((DIGIT * 40 - 7).astype(np.float32), mode="F"))
    assert np.abs(np.asarray(wide)[..., 0] - np.round(DIGIT * 255)).max() <= 1
    path = _save(tmp_path, Image.fromarray((DIGIT * 1000).astype(np.float32), mode="F"), "float.tiff")
    assert np.asarray(open_rgb(path)).max() == 255
    flat = to_rgb(Image.fromarray(np.full((4, 4), 3.0, np.float32), mode="F"))
    assert np.asarray(flat).max() == 0


@pytest.mark.parametrize("mode", ["1", "L", "P", "PA", "LA", "RGBA", "CMYK", "YCbCr"])
def test_other_modes_convert_as_torchvisions_loader_does(tmp_path, mode):
    from torchvision.datasets.folder import pil_loader

    base = Image.fromarray((np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8), "RGB")
    image = base.convert(mode)
    suffix = "tiff" if mode in ("CMYK", "YCbCr", "PA") else "png"
    if mode == "YCbCr":
        suffix = "jpg"
    path = tmp_path / f"image.{suffix}"
    try:
        image.save(path)
    except (OSError, ValueError, KeyError):
        path = None
    if path is not None:
        assert np.array_equal(np.asarray(open_rgb(path)), np.asarray(pil_loader(str(path))))
    assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(image.convert("RGB")))


def test_the_readers_share_it(tmp_path):
    """ImageFolder's and LitData's uint8 decoder, their PIL pipeline and the beton writer's data set
    return open_rgb's pixels for a 16-bit PNG."""
    from csa_lightning.data.image_folder import PilTransform
    from csa_lightning.data.uint8_pipeline import decode_uint8
    from csa_lightning.data.write_beton import RGBImageFolder

    (tmp_path / "0").mkdir()
    path = _save(tmp_path / "0", Image.fromarray(np.round(DIGIT * 65535).astype(np.uint16)), "a.png")
    expected = np.asarray(open_rgb(path))
    assert np.array_equal(decode_uint8(str(path)).permute(1, 2, 0).numpy(), expected)
    assert np.array_equal(np.asarray(PilTransform(lambda image: image)(str(path))), expected)
    assert np.array_equal(np.asarray(RGBImageFolder(str(tmp_path))[0][0]), expected)


def test_an_image_above_the_decompression_bomb_limit_names_the_file_and_the_fix(tmp_path, monkeypatch):
    path = _save(tmp_path, Image.new("L", (64, 64)), "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels > 2 x 1000: PIL refuses
    with pytest.raises(OSError) as err:
        open_rgb(path)
    assert str(path) in str(err.value) and "CSA_MAX_IMAGE_PIXELS=none" in str(err.value)
    monkeypatch.setenv("CSA_MAX_IMAGE_PIXELS", "none")
    assert open_rgb(path).size == (64, 64)


def test_a_file_that_is_not_an_image_names_itself(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(OSError, match=f"{path} is not an image file PIL can read"):
        open_rgb(path)
