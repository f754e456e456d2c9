"""ImageFolder data: class lists agree across splits, each stage reads its own folder, and a
corrupt image names its file (issue: nothing silently wrong)."""

import pytest
from PIL import Image

from csa_lightning.data import ImageFolderDataModule


def _tree(root, classes, per_class=2, size=8):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (size, size), color=(int(c) * 40, i * 50, 0)).save(root / c / f"{i}.png")
    return root


def _module(tmp_path, **paths):
    return ImageFolderDataModule(batch_size=2, num_workers=0, resolution=8, val_crop_ratio=1.0, flip=False,
                                 **{k: str(v) for k, v in paths.items()})  # fmt: skip


def test_a_validation_folder_with_other_classes_is_refused(tmp_path):
    """Before: train {0, 1, 2} and val {0, 2}: val folder "2" silently got label 1."""
    train = _tree(tmp_path / "train", ["0", "1", "2"])
    val = _tree(tmp_path / "val", ["0", "2"])
    with pytest.raises(ValueError) as err:
        _module(tmp_path, train_path=train, val_path=val).setup("fit")
    assert "only in val: none, missing from val: ['1']" in str(err.value) and "\n" not in str(err.value)
    extra = _tree(tmp_path / "val2", ["0", "1", "2", "3"])
    with pytest.raises(ValueError, match=r"only in val: \['3'\]"):
        _module(tmp_path, train_path=train, val_path=extra).setup("validate")


def test_each_stage_reads_its_own_folder(tmp_path):
    """Before: with test_path set, setup("validate") loaded the test folder as the validation set."""
    train = _tree(tmp_path / "train", ["0", "1"])
    val = _tree(tmp_path / "val", ["0", "1"], per_class=3)
    test = _tree(tmp_path / "test", ["0", "1"], per_class=1)
    data = _module(tmp_path, train_path=train, val_path=val, test_path=test)
    data.setup("validate")
    assert sum(len(y) for _, y in data.val_dataloader()) == 6
    data.setup("test")
    assert sum(len(y) for _, y in data.test_dataloader()) == 2
    data.setup("predict")
    assert sum(len(y) for _, y in data.predict_dataloader()) == 6  # no predict_path: the validation folder


def test_a_corrupt_image_names_its_file(tmp_path):
    """Before: a 111-line traceback ending in 'OSError: image file is truncated', no file name."""
    train = _tree(tmp_path / "train", ["0", "1"], size=64)
    bad = train / "1" / "0.png"
    bad.write_bytes(bad.read_bytes()[:60])
    data = _module(tmp_path, train_path=train, val_path=train)
    data.setup("validate")
    with pytest.raises(OSError) as err:
        for _ in data.val_dataloader():
            pass
    assert str(bad) in str(err.value) and "replace or remove the file" in str(err.value)


def test_channels_last_is_applied_to_the_batches():
    """channels_last was accepted and ignored: the batches now come in NHWC strides, as ffcv's do."""
    import torch

    from csa_lightning.data import FFCVDataModule, ImageFolderDataModule, ImageNetFFCVDataModule

    batch = [torch.randn(2, 3, 8, 8), torch.tensor([0, 1])]
    out = ImageFolderDataModule(channels_last=True).on_after_batch_transfer(batch, 0)
    assert out[0].is_contiguous(memory_format=torch.channels_last) and torch.equal(out[0], batch[0])
    plain = ImageFolderDataModule(channels_last=False).on_after_batch_transfer(batch, 0)
    assert plain[0].is_contiguous()
    assert ImageNetFFCVDataModule is FFCVDataModule  # the old name still works in configs and code
