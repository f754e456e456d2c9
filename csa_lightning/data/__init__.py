"""Lightning data modules and the beton writer. Imports no model code; ffcv only when used.

- [`FFCVDataModule`][csa_lightning.data.FFCVDataModule]: ``.beton`` files through ffcv (the fast path);
- [`ImageFolderDataModule`][csa_lightning.data.ImageFolderDataModule]: the same arguments over an ImageFolder tree,
  decoded to uint8 in loader workers (`csa_lightning.data.uint8_pipeline`), on the GPU with nvJPEG
  (`csa_lightning.data.device_decode`) or through PIL and torchvision;
- [`LitDataModule`][csa_lightning.data.LitDataModule]: LitData chunk folders (local, shared or in an object store),
  streamed;
- [`DigitsDataModule`][csa_lightning.data.DigitsDataModule]: scikit-learn's digits written to betons, through the FFCV
  path;
- [`DigitsMemoryDataModule`][csa_lightning.data.DigitsMemoryDataModule]: the same digits in memory (deterministic; for
  tests);
- [`COCODataModule`][csa_lightning.data.COCODataModule]: COCO-format detection / instance segmentation (pycocotools);
- [`DigitsCOCODataModule`][csa_lightning.data.DigitsCOCODataModule]: digits pasted on canvases, written as a COCO-format
  set.
"""

from .classification_data import IMAGENET_MEAN, IMAGENET_STD, ImageClassificationDataModule, stratified_order
from .coco import COCODataModule
from .digits import DigitsDataModule, DigitsMemoryDataModule
from .digits_coco import DigitsCOCODataModule
from .ffcv_imagenet import FFCVDataModule, ImageNetFFCVDataModule
from .image_folder import ImageFolderDataModule, TorchvisionImageData
from .litdata_stream import LitDataModule

__all__ = [
    "COCODataModule",
    "DigitsCOCODataModule",
    "DigitsDataModule",
    "DigitsMemoryDataModule",
    "ImageFolderDataModule",
    "TorchvisionImageData",
    "FFCVDataModule",
    "ImageClassificationDataModule",
    "ImageNetFFCVDataModule",
    "LitDataModule",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "stratified_order",
]
