"""Lightning data modules and the beton writer. Imports no model code; ffcv only when used.

- :class:`FFCVDataModule`: ``.beton`` files through ffcv (the fast path);
- :class:`ImageFolderDataModule`: the same arguments over an ImageFolder tree with torchvision;
- :class:`LitDataModule`: LitData chunk folders (local, shared or in an object store), streamed;
- :class:`DigitsDataModule`: scikit-learn's digits written to betons, through the FFCV path;
- :class:`DigitsMemoryDataModule`: the same digits in memory (deterministic; for tests);
- :class:`COCODataModule`: COCO-format detection / instance segmentation (pycocotools);
- :class:`DigitsCOCODataModule`: digits pasted on canvases, written as a COCO-format set.
"""

from .classification_data import IMAGENET_MEAN, IMAGENET_STD, ImageClassificationDataModule, stratified_order
from .coco import COCODataModule
from .digits import DigitsDataModule, DigitsMemoryDataModule
from .digits_coco import DigitsCOCODataModule
from .ffcv_imagenet import FFCVDataModule, ImageNetFFCVDataModule
from .image_folder import ImageFolderDataModule
from .litdata_stream import LitDataModule

__all__ = [
    "COCODataModule",
    "DigitsCOCODataModule",
    "DigitsDataModule",
    "DigitsMemoryDataModule",
    "ImageFolderDataModule",
    "FFCVDataModule",
    "ImageClassificationDataModule",
    "ImageNetFFCVDataModule",
    "LitDataModule",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "stratified_order",
]
