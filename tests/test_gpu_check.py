"""The GPU kit's dry run: the same code paths as on a GPU, on the CPU, with tiny sizes (<= 30 s),
and the report writer."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TIMEOUT

ROOT = Path(__file__).resolve().parents[1]


def load_gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_writer_counts_failures_and_writes_both_files(tmp_path):
    gpu_check = load_gpu_check()
    report = gpu_check.Report()
    report.run("numerics", "passes", lambda: "fine")
    report.run("numerics", "fails", lambda: (_ for _ in ()).throw(AssertionError("off by 1e-2\nmore")))
    report.run("train", "crashes", lambda: 1 / 0)
    report.tables.append("| a | b |")
    report.write(tmp_path, {"gpu": "test"})
    assert not report.ok
    data = json.loads((tmp_path / "report.json").read_text())
    assert [c["ok"] for c in data["checks"]] == [True, False, False]
    assert data["checks"][1]["detail"] == "off by 1e-2"  # one line
    assert data["checks"][2]["detail"].startswith("ZeroDivisionError")
    text = (tmp_path / "report.md").read_text()
    assert "**1 of 3 checks passed.**" in text and "| a | b |" in text and "- gpu: test" in text


def test_a_skipped_check_is_neither_passed_nor_failed(tmp_path):
    gpu_check = load_gpu_check()
    report = gpu_check.Report(tmp_path, {})
    report.run("train", "runs", lambda: "fine")
    report.run("train", "needs ffcv", lambda: (_ for _ in ()).throw(gpu_check.Skip("ffcv is not installed")))
    assert report.ok
    data = json.loads((tmp_path / "report.json").read_text())
    assert [(c["ok"], c["skipped"]) for c in data["checks"]] == [(True, False), (True, True)]
    text = (tmp_path / "report.md").read_text()
    assert "**1 of 1 checks passed (1 skipped: see below).**" in text
    assert "| train | needs ffcv | skipped |" in text and "ffcv is not installed" in text


def test_report_is_on_disk_after_every_check(tmp_path):
    """A run killed at its time limit (the GPU lease's) keeps every check it finished."""
    gpu_check = load_gpu_check()
    report = gpu_check.Report(tmp_path, {"gpu": "test"})
    report.run("numerics", "first", lambda: "fine")
    assert [c["check"] for c in json.loads((tmp_path / "report.json").read_text())["checks"]] == ["first"]
    report.run("speed", "second", lambda: 1 / 0)
    data = json.loads((tmp_path / "report.json").read_text())
    assert [c["ok"] for c in data["checks"]] == [True, False] and not data["ok"]
    assert "**1 of 2 checks passed.**" in (tmp_path / "report.md").read_text()


def test_every_block_and_csa_mode_is_checked():
    gpu_check = load_gpu_check()
    labels = [label for label, _, _ in gpu_check.block_variants()]
    assert {"se", "cbam", "eca", "gct"} <= set(labels)
    # contiguity modes x distance modes x (contiguity_grad, fused kernels, PyTorch path)
    assert len([label for label in labels if label.startswith("csa")]) == 3 * 3 * 3
    assert {"csa hybrid pooled", "csa hybrid pooled torch-kernel", "csa l2 grad"} <= set(labels)


@pytest.mark.system
@pytest.mark.slow
def test_cpu_quick_dry_run_passes_every_section(tmp_path):
    """All four sections on the CPU with tiny sizes: what the GPU run executes, minus the GPU and
    the FFCV fit (skipped in a dry run). Runs as its own process, as on the GPU machine (34 s alone
    here, 14 s of it the detection fast_dev_run on 64 px canvases: it was 94 s at 128 px, batch 4)."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check.py"),
            "--device",
            "cpu",
            "--quick",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "report.json").read_text())
    sections = {c["section"] for c in data["checks"]}
    assert sections == {"numerics", "speed", "decode", "train"} and data["ok"]
    ffcv = next(c for c in data["checks"] if c["check"] == "FFCV data module fit")
    assert ffcv["skipped"] and ffcv["detail"].startswith("--quick: the FFCV path is tested"), ffcv
    assert "ResNet-18, batch 2" in (tmp_path / "report.md").read_text()


def test_cuda_without_a_gpu_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
    assert result.returncode == 2 and "no CUDA device is visible" in result.stderr.strip().splitlines()[-1]
