"""Encoded sample photos for the decode tests (scikit-learn's two 427 x 640 photos, no download):
the JPEG kinds a loader meets, and a two-class ImageFolder tree of photo crops."""

import io

import numpy as np
from PIL import Image


def photo(index: int = 0) -> np.ndarray:
    from sklearn.datasets import load_sample_images

    return load_sample_images().images[index]  # 427 x 640 RGB photos, what scikit-learn ships


def encoded(image: Image.Image, format: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def _exif_rotated(image: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return encoded(image, exif=exif.tobytes())


JPEG_KINDS = {
    "4:2:0": lambda im: encoded(im, quality=90),
    "4:4:4": lambda im: encoded(im, quality=90, subsampling=0),
    "progressive": lambda im: encoded(im, quality=85, progressive=True),
    "greyscale": lambda im: encoded(im.convert("L"), quality=90),
    "CMYK": lambda im: encoded(im.convert("CMYK"), quality=90),
    "EXIF-rotated": _exif_rotated,
}


def photo_tree(root, count: int = 6):
    """``root/<0|1>/<i>.jpg``: ``count`` 200 x 260 crops of each sample photo, quality 90."""
    for label in range(2):
        folder = root / str(label)
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(photo(label)[i * 20 : i * 20 + 200, :260]).save(folder / f"{i}.jpg", quality=90)
    return root
