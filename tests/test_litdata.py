"""LitData: the converter, the data module's checks, and a run stopped mid-epoch by SIGTERM that
resumes at the next batch of the same epoch, every training image of that epoch seen exactly once."""

import json
import shutil
from pathlib import Path

import pytest

from csa_lightning.data.digits import write_digits_image_folder
from csa_lightning.data.write_litdata import main as write_litdata

from .conftest import DEMO_CONFIG, refusal

litdata = pytest.importorskip("litdata")


@pytest.fixture(scope="session")
def digit_chunks(tmp_path_factory, worker_id):
    """The digits (16 px PNGs) as an ImageFolder tree and as LitData chunk folders (several chunks),
    written once for all xdist workers (about 35 s: LitData converts in spawned processes)."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    root = shared / "litdata_digits"
    with FileLock(str(shared / "litdata_digits.lock")):
        if not (root / "chunks" / "val" / "classes.json").exists():
            images = write_digits_image_folder(str(root / "images"), 16)
            assert write_litdata([str(images), str(root / "chunks"), "--chunk-bytes", "64KB", "--workers", "2"]) == 0
    return root / "images", root / "chunks"


@pytest.mark.system  # the chunk fixture: LitData converts in spawned processes (~30 s)
def test_the_converter_keeps_bytes_labels_and_a_stratified_order_and_is_idempotent(digit_chunks, capsys):
    images, chunks = digit_chunks
    about = json.loads((chunks / "val" / "classes.json").read_text())
    assert about["classes"] == [str(c) for c in range(10)] and about["count"] == 360
    stream = litdata.StreamingDataset(str(chunks / "val"))
    assert len(stream) == 360 and len(list(chunks.glob("train/chunk-*.bin"))) > 2
    first = stream[0]
    assert bytes(first["image"]) == (images / "val" / first["path"]).read_bytes()  # the file, not re-encoded
    labels = [stream[i]["label"] for i in range(20)]
    assert sorted(labels[:10]) == list(range(10)) and sorted(labels[10:20]) == list(range(10))  # every prefix
    assert write_litdata([str(images), str(chunks), "--workers", "2"]) == 0  # finished splits are not rewritten
    assert "already written (1437 items)" in capsys.readouterr().out


@pytest.mark.system  # the chunk fixture: LitData converts in spawned processes (~30 s)
def test_a_conversion_stopped_before_its_marker_is_written_again(digit_chunks, tmp_path, capsys):
    """Killed after LitData's index.json but before classes.json: the data module refuses the folder,
    and the next run of the converter writes it again instead of calling it finished."""
    from csa_lightning.data.write_litdata import write_split

    images, chunks = digit_chunks
    out = tmp_path / "val"
    shutil.copytree(chunks / "val", out)
    (out / "classes.json").unlink()
    import multiprocessing

    before = multiprocessing.get_start_method(allow_none=True)
    about = write_split(images / "val", str(out), chunk_bytes="64KB", workers=1)
    # LitData forces the spawn start method; the converter puts the process's own back (ffcv's
    # writer, run later in the same process, pickled a lambda under spawn and failed)
    assert multiprocessing.get_start_method(allow_none=True) == before
    assert about["count"] == 360 and json.loads((out / "classes.json").read_text()) == about
    assert len(litdata.StreamingDataset(str(out))) == 360


@pytest.mark.system  # the chunk fixture: LitData converts in spawned processes (~30 s)
@pytest.mark.parametrize(
    "change, message",
    [
        ("no classes.json", "is not a finished conversion of this project (no classes.json); run python -m"),
        ("no index.json", "is an unfinished conversion (no index.json); run python -m"),
        ("wrong count", "holds 360 items but its conversion wrote 361; the folder was changed"),
        ("ftp", "data.val_path: LitData cannot read 'ftp://' URLs"),
        ("missing", "chunk folder not found"),
    ],
)
def test_bad_chunk_folders_are_one_line_before_training(digit_chunks, tmp_path, change, message):
    from csa_lightning.data import LitDataModule

    _, chunks = digit_chunks
    val = tmp_path / "val"
    shutil.copytree(chunks / "val", val)
    if change == "no classes.json":
        (val / "classes.json").unlink()
    elif change == "no index.json":
        (val / "classes.json").unlink()
        (val / "index.json").unlink()
    elif change == "wrong count":
        about = json.loads((val / "classes.json").read_text())
        (val / "classes.json").write_text(json.dumps({**about, "count": 361}))
    path = {"ftp": "ftp://host/val", "missing": str(tmp_path / "nothing")}.get(change, str(val))
    module = LitDataModule(train_path=str(chunks / "train"), val_path=path, batch_size=8, num_workers=0)
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        module.setup("fit")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_object_store_without_credentials_is_one_line(monkeypatch):
    from csa_lightning.data.litdata_stream import check_stream

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to ask for
    with pytest.raises(ValueError) as err:
        check_stream("s3://csa-no-such-bucket/imagenet/train", "train")
    message = str(err.value)
    assert (
        message.startswith("cannot read s3://csa-no-such-bucket/imagenet/train/classes.json (") and "\n" not in message
    )
    assert "check the URL and the object store's credentials" in message


def test_the_converter_refuses_bad_input_in_one_line(tmp_path, capsys):
    assert "no split folder" in refusal(
        capsys, write_litdata, [str(tmp_path), str(tmp_path / "out"), "--splits", "train"]
    )
    assert "OUT must be a local or shared folder" in refusal(capsys, write_litdata, [str(tmp_path), "s3://bucket/x"])


def _fit(chunks, root, *extra):
    from csa_lightning.cli import main as cli_main

    return cli_main(
        [
            "fit", "--config", str(DEMO_CONFIG), "--data", "csa_lightning.data.LitDataModule",
            "--data.train_path", str(chunks / "train"), "--data.val_path", str(chunks / "val"),
            "--data.resolution", "16", "--data.batch_size", "64", "--data.num_workers", "0", "--data.flip", "false",
            "--model.net.init_args.depth", "18", "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root),
            *extra,
        ]
    )  # fmt: skip


@pytest.mark.system
@pytest.mark.slow
def test_a_run_stopped_mid_epoch_resumes_at_the_next_batch_seeing_each_image_once(digit_chunks, tmp_path, capsys):
    """A SIGTERM to this process at epoch 1, batch 5, then the same command with --ckpt_path last
    (two in-process fits, ~40 s)."""
    _, chunks = digit_chunks
    record = tmp_path / "ids"
    probe = f"--trainer.callbacks+=tests.litdata_probe.RecordSampleIds --trainer.callbacks.path {record}"
    with pytest.raises(SystemExit) as stopped:
        _fit(chunks, tmp_path / "run", *probe.split(), "--trainer.callbacks+=tests.litdata_probe.SigtermAt",
             "--trainer.callbacks.epoch", "1", "--trainer.callbacks.batch", "5")  # fmt: skip
    assert stopped.value.code == 143
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "interrupted by SIGTERM in epoch 1 (step 28); saved at the stop:" in line
    assert "the loader resumes at its next batch of this epoch" in line
    _fit(chunks, tmp_path / "run", *probe.split(), "--ckpt_path", "last")
    batches = [json.loads(line) for line in record.with_suffix(".rank0.jsonl").read_text().splitlines()]
    epoch1 = [b for b in batches if b["epoch"] == 1]
    assert [b["batch"] for b in epoch1] == list(range(22))  # 0..5 before the stop, 6..21 after: no gap, no repeat
    assert [b["step"] for b in epoch1] == list(range(23, 45))
    ids = [i for b in epoch1 for i in b["ids"]]
    assert len(ids) == len(set(ids)) == 22 * 64  # each image of the epoch once (drop_last: 1437 -> 22 batches)
    epoch0 = {i for b in batches if b["epoch"] == 0 for i in b["ids"]}
    assert epoch0 != set(ids) and len(epoch0 | set(ids)) == 1437  # epochs shuffle anew


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.xdist_group("ddp")  # one DDP launch at a time: each picks a free port for gloo
def test_ddp_two_cpu_processes_each_stream_their_own_shard(digit_chunks, tmp_path):
    """Two gloo processes: LitData gives each rank its own shard of every epoch and the same number
    of batches (a rank with fewer would hang the other in its all-reduce). ~30 s: two processes."""
    import os
    import subprocess
    import sys

    _, chunks = digit_chunks
    root = Path(__file__).resolve().parents[1]
    record = tmp_path / "ids"
    cmd = [
        sys.executable, str(root / "cli.py"), "fit", "--config", str(DEMO_CONFIG),
        "--data", "csa_lightning.data.LitDataModule", "--data.train_path", str(chunks / "train"),
        "--data.val_path", str(chunks / "val"), "--data.resolution", "16", "--data.batch_size", "32",
        "--data.num_workers", "1", "--data.flip", "false", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.callbacks+=tests.litdata_probe.RecordSampleIds", "--trainer.callbacks.path", str(record),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(root))
    out = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [
        [json.loads(line) for line in record.with_suffix(f".rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)
    ]
    for epoch in (0, 1):
        batches = [[b for b in rank if b["epoch"] == epoch] for rank in ranks]
        assert len(batches[0]) == len(batches[1]) > 0  # the same number of batches on both ranks
        ids = [{i for b in rank for i in b["ids"]} for rank in batches]
        assert not ids[0] & ids[1]  # disjoint shards
        assert len(ids[0] | ids[1]) >= 1437 - 2 * 32 * 2  # together the epoch, but for the dropped last batches


def test_the_converter_refuses_empty_class_folders_and_non_images_naming_them(tmp_path, capsys):
    """Before: an empty class folder gave torchvision's traceback, and a text file named .jpg was stored
    as an image item without a word (it failed only when read)."""
    from PIL import Image

    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "b").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "a" / "x.png")
    error = refusal(capsys, write_litdata, [str(tmp_path), str(tmp_path / "out"), "--splits", "train"])
    assert error.startswith(f"error: class folder {tmp_path / 'train' / 'b'} holds no image files (.jpg, ")
    (tmp_path / "train" / "b" / "y.jpg").write_text("not an image")
    error = refusal(capsys, write_litdata, [str(tmp_path), str(tmp_path / "out"), "--splits", "train"])
    assert error.startswith(f"error: 1 file(s) under {tmp_path / 'train'} are not images PIL can read, e.g. ")
    assert "y.jpg (UnidentifiedImageError" in error and not (tmp_path / "out").exists()


def test_max_side_re_encodes_only_larger_images(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from csa_lightning.data.write_litdata import shrink_to_max_side

    pixels = (np.random.default_rng(0).random((400, 600, 3)) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    large = buffer.getvalue()
    smaller = shrink_to_max_side(large, 300, quality=80)
    with Image.open(io.BytesIO(smaller)) as image:
        assert image.format == "JPEG" and image.size == (300, 200)
    assert shrink_to_max_side(large, 600) is large  # not above the limit: the file's own bytes


def test_max_side_and_quality_are_checked(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    assert "--max-side must be a positive" in refusal(
        capsys, write_litdata, [str(tmp_path), str(tmp_path / "out"), "--max-side", "0"]
    )
    assert "--quality must be in 1..100" in refusal(
        capsys, write_litdata, [str(tmp_path), str(tmp_path / "out"), "--quality", "101"]
    )


@pytest.mark.system  # LitData converts in spawned processes (~30 s)
def test_the_converter_stores_large_images_at_max_side(tmp_path):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / "images" / "train" / label).mkdir(parents=True)
        Image.new("RGB", (640, 480), (40, 90, 200)).save(tmp_path / "images" / "train" / label / "big.jpg")
        Image.new("RGB", (200, 150), (40, 90, 200)).save(tmp_path / "images" / "train" / label / "small.jpg")
    out = tmp_path / "chunks"
    assert write_litdata([str(tmp_path / "images"), str(out), "--splits", "train", "--max-side", "320",
                          "--workers", "1"]) == 0  # fmt: skip
    about = json.loads((out / "train" / "classes.json").read_text())
    assert about["max_side"] == 320 and about["count"] == 4
    import io

    stream = litdata.StreamingDataset(str(out / "train"))
    sizes = {}
    for i in range(len(stream)):
        with Image.open(io.BytesIO(bytes(stream[i]["image"]))) as image:
            sizes[stream[i]["path"].split("/")[-1]] = image.size
    assert sizes == {"big.jpg": (320, 240), "small.jpg": (200, 150)}
