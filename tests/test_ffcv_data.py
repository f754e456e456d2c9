"""The FFCV path: beton writing, loaders, epoch-determined order, thread count, DDP.

Every ffcv Loader compiles for seconds, so the loaders are built once per module.
"""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from csa_lightning.data import DigitsDataModule, ImageFolderDataModule
from csa_lightning.data.ffcv_imagenet import beton_labels, beton_num_samples_and_classes
from csa_lightning.data.write_beton import main as write_beton_main
from csa_lightning.data.write_beton import write_beton

from .conftest import DEMO_CONFIG, ROOT, TIMEOUT, refusal


@pytest.fixture(scope="module")
def digits_loaders(digits_betons):
    data = DigitsDataModule(data_dir=str(digits_betons))
    data.setup("fit")
    fake_trainer = SimpleNamespace(
        current_epoch=0, world_size=1, strategy=SimpleNamespace(root_device=torch.device("cpu"))
    )
    data.trainer = fake_trainer
    return data, data.train_dataloader(), data.val_dataloader(), fake_trainer


def labels_of(loader):
    # ffcv reuses its output buffers a few batches later: keep copies, not views
    return torch.cat([labels.clone() for _, labels in loader])


def test_beton_metadata(digits_betons):
    assert beton_num_samples_and_classes(str(digits_betons / "digits_32px_train.beton")) == (1437, 10)
    assert beton_num_samples_and_classes(str(digits_betons / "digits_32px_val.beton")) == (360, 10)


def test_train_and_val_batches(digits_loaders):
    data, train, val, _ = digits_loaders
    threads = torch.get_num_threads()
    images, labels = next(iter(train))
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels.dtype in (torch.int64, torch.int32) and labels.shape == (64,)
    assert len(train) == 1437 // 64  # drop_last on training
    val_labels = labels_of(val)
    assert len(val_labels) == 360  # no drop_last on validation: every image once
    assert torch.bincount(val_labels.long()).tolist() == [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]
    # normalised with the digits' own statistics
    stacked = torch.cat([x.clone() for x, _ in val])
    assert abs(float(stacked.mean())) < 0.1 and 0.8 < float(stacked.std()) < 1.2
    assert torch.get_num_threads() == threads, "ffcv must not change torch's thread count"


def test_training_order_is_a_function_of_the_trainer_epoch(digits_loaders):
    """Resuming needs epoch e of a new process to replay epoch e of the old one."""
    _, train, _, trainer = digits_loaders
    trainer.current_epoch = 3
    first = labels_of(train)
    trainer.current_epoch = 4
    other = labels_of(train)
    trainer.current_epoch = 3
    again = labels_of(train)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_write_beton_converts_whatever_pil_opens_to_rgb(tmp_path):
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
    pixels = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert("CMYK").save(root / "a" / "cmyk.jpg")
    Image.fromarray(pixels[:, :, 0]).save(root / "a" / "grey.png")
    Image.fromarray(pixels).convert("P").save(root / "b" / "palette.png")
    Image.fromarray(np.dstack([pixels, pixels[:, :, :1]])).save(root / "b" / "rgba.png")
    Image.fromarray(pixels).resize((600, 400)).save(root / "b" / "large.jpg")
    out = tmp_path / "out" / "mixed.beton"
    write_beton_main(["--root", str(root), "--out", str(out), "--max-resolution", "64", "--num-workers", "1"])
    assert beton_num_samples_and_classes(str(out)) == (5, 2)
    assert [p.name for p in out.parent.iterdir()] == ["mixed.beton"]


def test_write_beton_errors_leave_no_partial_file(tmp_path, capsys):
    exit_info = refusal(
        capsys, write_beton_main, ["--root", str(tmp_path / "nope"), "--out", str(tmp_path / "x.beton")]
    )
    assert "image folder not found" in exit_info
    root = tmp_path / "folder" / "a"
    root.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "ok.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(ValueError, match=r"1 unreadable image file\(s\) under .*broken.jpg .*fix or remove them"):
        write_beton(str(tmp_path / "folder"), str(tmp_path / "out.beton"), num_workers=1)
    assert not list(tmp_path.glob("*.beton*")) and not list(tmp_path.glob(".out.beton*"))


def test_corrupt_beton_is_reported(tmp_path, digits_betons):
    bad = tmp_path / "bad.beton"
    bad.write_bytes((digits_betons / "digits_32px_val.beton").read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot read beton .*bad.beton.*corrupt"):
        beton_num_samples_and_classes(str(bad))


def test_image_folder_data_module_reads_the_same_images(digits_betons):
    folder = digits_betons / "images_32px"
    data = ImageFolderDataModule(
        train_path=str(folder / "train"), val_path=str(folder / "val"), batch_size=32, num_workers=0,
        resolution=32, val_crop_ratio=1.0, flip=False,
    )  # fmt: skip
    data.setup("fit")
    assert data.num_classes == 10
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (32, 3, 32, 32)
    assert sum(len(y) for _, y in data.val_dataloader()) == 360
    with pytest.raises(FileNotFoundError, match="train image folder not found"):
        ImageFolderDataModule(train_path=str(folder / "nope"), val_path=str(folder / "val")).setup("fit")


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.xdist_group("ddp")  # one DDP launch at a time: each picks a free port for gloo
def test_ddp_two_cpu_processes_shard_data_and_sync_metrics(tmp_path, digits_betons):
    """The digits config under DDP with 2 CPU processes (gloo), each reading its shard through
    ffcv's distributed loader; the validation metric must be identical on both ranks. Long (~30-40
    s): two real processes, each importing torch, Lightning and ffcv and compiling ffcv's pipelines."""
    probe_dir = tmp_path / "probe"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), PROBE_DIR=str(probe_dir))
    cmd = [
        sys.executable, str(ROOT / "cli.py"), "fit", "--config", str(DEMO_CONFIG),
        "--data.data_dir", str(digits_betons), "--data.num_workers", "1",
        "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "3", "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.callbacks+=ddp_probe.RecordRankMetrics",
    ]  # fmt: skip
    out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted(probe_dir.glob("rank*.json"))]
    assert [r["rank"] for r in records] == [0, 1] and all(r["world_size"] == 2 for r in records)
    assert records[0]["val_top1"] == records[1]["val_top1"], "torchmetrics must synchronise val/top1"
    # the synchronised value is the accuracy over both shards, not either rank's own
    both = sum(r["val_correct"] for r in records) / sum(r["val_samples"] for r in records)
    assert records[0]["val_top1"] == pytest.approx(both, abs=1e-6)
    # each rank validated its own half; together they cover the 360 validation images
    seen = [r["val_samples"] for r in records]
    assert sum(seen) >= 360 and max(seen) <= 184
    assert all(r["train_batches"] == 3 and r["train_batch_size"] == 64 for r in records)
    assert "Grad strides do not match bucket view strides" not in out.stderr


def test_a_killed_writers_leftovers_are_removed_by_the_next_writer(tmp_path):
    """Before: a killed write_beton left .NAME.partial-PID (42 MB here, tens of GB on ImageNet) and
    an .errors-PID folder that no later run removed."""
    import os

    from csa_lightning.checks import remove_dead_leftovers
    from csa_lightning.data.write_beton import write_beton

    out = tmp_path / "betons" / "x.beton"
    out.parent.mkdir()
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    (out.parent / f".x.beton.partial-{dead}").write_bytes(b"\0" * 1024)
    (out.parent / f".x.beton.errors-{dead}").mkdir()
    live = out.parent / f".x.beton.partial-{os.getpid()}"  # a writer still running: kept
    live.write_bytes(b"\0")
    other = out.parent / f".y.beton.partial-{dead}"  # another file's: not this writer's business
    other.write_bytes(b"\0")
    removed = remove_dead_leftovers(out)
    assert sorted(p.name for p in removed) == sorted([f".x.beton.partial-{dead}", f".x.beton.errors-{dead}"])
    assert live.exists() and other.exists()
    # write_beton does it itself before writing
    (out.parent / f".x.beton.partial-{dead}").write_bytes(b"\0")
    images = tmp_path / "images" / "0"
    images.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(images / "a.png")
    write_beton(str(tmp_path / "images"), str(out), max_resolution=8, num_workers=1)
    assert out.is_file() and not (out.parent / f".x.beton.partial-{dead}").exists()


@pytest.mark.parametrize("cut", [2000, 24, 7])
def test_a_beton_cut_short_at_its_tail_is_refused_when_opened(tmp_path, digits_betons, cut):
    """Before: a validation beton missing its last 2,000 bytes hung `cli.py validate` forever (an
    ffcv decoding thread died); a cut training beton ended in `empty range for randrange()`."""
    good = digits_betons / "digits_32px_val.beton"
    assert beton_num_samples_and_classes(str(good)) == (360, 10)
    bad = tmp_path / "cut.beton"
    bad.write_bytes(good.read_bytes()[:-cut])
    with pytest.raises(
        ValueError, match=r"beton .*cut.beton is truncated or corrupt \(.*\); copy it again or rewrite it"
    ):
        beton_num_samples_and_classes(str(bad))


@pytest.mark.slow
def test_validate_on_a_cut_short_beton_ends_in_one_line(tmp_path, digits_betons):
    """The user's case end to end: `cli.py validate` on a validation beton missing its last 2,000
    bytes used to wait at 1/6 forever; now it stops before any loader with one line naming the file."""
    import shutil
    import subprocess
    import sys

    from .conftest import DEMO_CONFIG, ROOT

    data = tmp_path / "digits"
    shutil.copytree(digits_betons, data)
    val = data / "digits_32px_val.beton"
    val.write_bytes(val.read_bytes()[:-2000])
    cmd = [sys.executable, str(ROOT / "cli.py"), "validate", "--config", str(DEMO_CONFIG), "--data.data_dir", str(data)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: beton {val} is truncated or corrupt (") and "rewrite it" in last


@pytest.mark.slow
def test_predictions_csv_keeps_each_batchs_own_labels(in_tmp_cwd, digits_betons):
    """predict through FFCV: the label column used to hold later batches' labels in the first rows
    (predict_step kept a view of ffcv's reused label buffer; the writer writes at epoch end)."""
    import csv

    from csa_lightning.cli import main

    predicted = main(["predict", "--config", str(DEMO_CONFIG), "--data.data_dir", str(digits_betons),
                      "--data.num_workers", "1"])  # fmt: skip
    written = next(c for c in predicted.trainer.callbacks if type(c).__name__ == "PredictionWriter").path
    rows = list(csv.DictReader(open(written)))
    labels = torch.tensor([int(r["label"]) for r in rows])
    assert torch.bincount(labels).tolist() == [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]
    truth = beton_labels(str(digits_betons / "digits_32px_val.beton"))
    assert [truth[int(r["index"])] for r in rows] == labels.tolist()
    assert sorted(int(r["index"]) for r in rows) == list(range(360))
    # stratified evaluation order: the first batch spans every class, as any prefix does
    assert torch.bincount(labels[:64], minlength=10).min() >= 6


def test_a_beton_of_another_kind_is_named_before_any_loader(tmp_path):
    """Before: a beton with other fields ended in an IndexError inside ffcv's loader."""
    from ffcv.fields import FloatField, IntField
    from ffcv.writer import DatasetWriter

    path = tmp_path / "other.beton"
    data = [(float(i), i % 3) for i in range(10)]
    DatasetWriter(str(path), {"value": FloatField(), "label": IntField()}, num_workers=1).from_indexed_dataset(data)
    with pytest.raises(ValueError) as err:
        beton_labels(str(path))
    assert str(err.value) == (
        f"beton {path} is not a classification beton (its fields: value: FloatField, label: IntField; expected "
        "image: RGBImageField, label: IntField); write one with python -m csa_lightning.data.write_beton"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-resolution", "0"], "error: --max-resolution must be a positive integer, got 0"),
        (["--jpeg-quality", "150"], "error: --jpeg-quality must be in 1..100, got 150"),
        (["--compress-probability", "2"], "error: --compress-probability must be in [0, 1], got 2.0"),
        (["--num-workers", "-1"], "error: --num-workers must be >= 0, got -1"),
    ],
)
def test_writer_options_are_checked_before_any_work(args, message, tmp_path, capsys):
    """Before: --max-resolution 0 left ffcv's writer hanging."""
    (tmp_path / "tree" / "0").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "tree" / "0" / "a.png")
    exit_info = refusal(
        capsys, write_beton_main, ["--root", str(tmp_path / "tree"), "--out", str(tmp_path / "t.beton"), *args]
    )
    assert exit_info == message and not list(tmp_path.glob("*beton*"))
