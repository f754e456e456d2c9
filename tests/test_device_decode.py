"""data.pipeline nvjpeg, tested on the CPU: the workers' hand-over (file bytes, the crop drawn as the
uint8 pipeline draws it) and ``decode_batch`` give the uint8 pipeline's crops (torchvision's CPU
decoder stands in for nvJPEG: the same code after the decode); files nvJPEG is not given come
decoded from the workers; a corrupt JPEG is named; without CUDA the option refuses in one line.
The GPU's own pixels and rate: benchmarks/gpu_check.py."""

import pytest
import torch
from PIL import Image

from csa_lightning.data import device_decode
from csa_lightning.data.device_decode import (
    DeferredImages,
    DeferredRandomResizedCrop,
    DeferredResizeCenterCrop,
    EncodedJpeg,
    collate_deferred,
    decode_batch,
    require_cuda,
)
from csa_lightning.data.uint8_pipeline import RandomResizedCropUint8, ResizeCenterCropUint8
from csa_lightning.errors import UsageError

from .sample_images import JPEG_KINDS, encoded, photo, photo_tree

#: every JPEG kind and a PNG
FILES = {**JPEG_KINDS, "PNG": lambda im: encoded(im, format="PNG")}
#: what nvJPEG is given; the rest is decoded in the workers
ON_DEVICE = {"4:2:0", "4:4:4", "progressive", "EXIF-rotated"}


def _files():
    return {kind: make(Image.fromarray(photo(i % 2)[40 * i : 40 * i + 300, 20 * i : 20 * i + 400]))
            for i, (kind, make) in enumerate(FILES.items())}  # fmt: skip


def test_training_crops_are_the_uint8_pipelines():
    files = _files()
    torch.manual_seed(0)
    reference = [RandomResizedCropUint8(96, dct_scaling=False)(data) for data in files.values()]
    torch.manual_seed(0)
    deferred = DeferredRandomResizedCrop(96)
    handed = [deferred(data, name=kind) for kind, data in files.items()]
    assert [isinstance(h, EncodedJpeg) for h in handed] == [kind in ON_DEVICE for kind in files]
    batch = decode_batch(handed, "cpu")
    assert batch.shape == (len(files), 3, 96, 96) and batch.dtype == torch.uint8
    for got, want in zip(batch, reference):
        assert (got.int() - want.int()).abs().max() <= 1


def test_validation_crops_are_the_uint8_pipelines():
    files = _files()
    reference = torch.stack([ResizeCenterCropUint8(80, 91, dct_scaling=False)(data) for data in files.values()])
    batch = decode_batch([DeferredResizeCenterCrop(80, 91)(data) for data in files.values()], "cpu")
    assert (batch.int() - reference.int()).abs().max() <= 1


def test_training_augmentation_runs_on_the_decoded_crops():
    data = _files()["4:2:0"]
    handed = [DeferredRandomResizedCrop(64, auto_augment="trivial")(data) for _ in range(4)]
    seen = []

    def augment(crop):
        seen.append(crop.shape)
        return 255 - crop

    plain = decode_batch(handed, "cpu")
    augmented = decode_batch(handed, "cpu", augment=augment)
    assert seen == [(3, 64, 64)] * 4 and torch.equal(augmented, 255 - plain)


def test_a_truncated_jpeg_is_named(tmp_path):
    good = _files()["4:2:0"]
    path = tmp_path / "cut.jpg"
    path.write_bytes(good[:5000])  # the header whole, the scan cut
    handed = [DeferredResizeCenterCrop(64, 73)(good), DeferredResizeCenterCrop(64, 73)(str(path))]
    with pytest.raises(OSError, match="cannot decode image .*cut.jpg on cpu .*replace or remove the file") as err:
        decode_batch(handed, "cpu")
    assert "\n" not in str(err.value)


def test_collate_keeps_the_hand_over_for_the_training_process():
    handed = [(DeferredResizeCenterCrop(32, 37)(_files()["4:2:0"]), label, 10 + label) for label in range(3)]
    images, labels, indices = collate_deferred(handed)
    assert isinstance(images, DeferredImages) and len(images) == 3
    assert torch.equal(labels, torch.tensor([0, 1, 2])) and torch.equal(indices, torch.tensor([10, 11, 12]))


def test_the_data_module_decodes_in_the_training_process(tmp_path, monkeypatch):
    """The whole path through ImageFolder's loader with a worker process, CUDA's check lifted and
    the CPU as the device: the batch the model sees is the uint8 pipeline's, normalised."""
    from types import SimpleNamespace

    from csa_lightning.data import ImageFolderDataModule

    root = photo_tree(tmp_path / "images")
    monkeypatch.setattr(device_decode, "require_cuda", lambda device=None: None)
    seen = {}
    for pipeline in ("nvjpeg", "uint8"):
        dm = ImageFolderDataModule(train_path=str(root), val_path=str(root), batch_size=8, num_workers=1,
                                   resolution=64, pipeline=pipeline, dct_scaling=False)  # fmt: skip
        dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
        dm.setup("fit")
        batch = next(iter(dm.val_dataloader()))
        assert isinstance(batch[0], DeferredImages) == (pipeline == "nvjpeg")
        seen[pipeline] = dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0)
    assert torch.equal(seen["nvjpeg"][1], seen["uint8"][1])
    assert seen["nvjpeg"][0].is_contiguous(memory_format=torch.channels_last)
    assert (seen["nvjpeg"][0] - seen["uint8"][0]).abs().max() <= 1.01 / 255 / min(dm.std)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal without CUDA")
def test_without_cuda_the_option_refuses_in_one_line(tmp_path):
    from csa_lightning.data import ImageFolderDataModule

    dm = ImageFolderDataModule(train_path=str(photo_tree(tmp_path / "images")), pipeline="nvjpeg")
    with pytest.raises(UsageError, match="data.pipeline 'nvjpeg' decodes on a CUDA GPU") as err:
        dm.setup("fit")
    assert "'uint8'" in str(err.value) and "\n" not in str(err.value)


def test_a_trainer_off_the_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(UsageError, match="trainer runs on cpu.*trainer.accelerator gpu"):
        require_cuda(torch.device("cpu"))
    require_cuda(torch.device("cuda", 0))


def test_litdata_items_are_handed_over_the_same_way():
    """LitData's stream items (the file's bytes, label, index) through the same transform and collate."""
    from csa_lightning.data.litdata_stream import _Decode

    decode = _Decode(DeferredRandomResizedCrop(48))
    files = _files()
    items = [decode({"image": files[kind], "label": i, "index": 7 + i, "path": kind}) for i, kind in enumerate(files)]
    images, labels, indices = collate_deferred(items)
    assert [isinstance(image, EncodedJpeg) for image in images] == [kind in ON_DEVICE for kind in files]
    assert images[0].name == "stream item 7 (4:2:0)"
    assert decode_batch(images, "cpu").shape == (len(files), 3, 48, 48)
    assert torch.equal(indices, torch.arange(7, 7 + len(files)))
