"""Proof on a GPU: one command that exercises every CUDA path of csa-lightning in about 5 minutes.

    make gpu-check                                   # = python benchmarks/gpu_check.py --out runs/gpu-check
    python benchmarks/gpu_check.py --out DIR [--only numerics,speed,train] [--device cuda|cpu] [--quick]

Sections (``--only`` picks some; all by default), each a list of named checks:

- numerics: TF32 off; every block (CSA in every contiguity and distance mode, ``contiguity_grad``
  on and off, its fused Triton kernels and its PyTorch path) in float32 on the GPU against the
  same block in float64 on the CPU: outputs within 1e-4 and input gradients within 1e-3, relative
  to the largest reference value; then bf16 and fp16 autocast on the degenerate inputs the CPU
  tests use (all-zero maps, identical channels, constant maps, batch of one, tiny and huge values,
  a zero-initialised last BN): finite outputs and gradients.
- speed: ``csa_lightning.benchmark.benchmark`` (the same code as ``python -m
  csa_lightning.benchmark --device cuda --bf16 --channels-last``): ResNet-50 with none / SE / CBAM
  / ECA / GCT / CSA (l2 and hybrid, and the authors' every-block pooled variant), batch 128 and 64,
  bf16 autocast, channels_last; training-step
  and inference times (CUDA events, median after a warm-up round), ratios to plain ResNet-50 of
  the same run, peak memory and its ratio, beside the paper's Table 4.
- decode: ``data.pipeline: nvjpeg`` (`csa_lightning.data.device_decode`): photo-like JPEGs (500 x
  375, cut from scikit-learn's two sample photos, quality 90) handed over as the loader's workers
  hand them, decoded, cropped and resized on the device in batches of 256: pixels against the same
  crops decoded on the CPU (PSNR, at least 30 dB: the DCT-scaling contract) and images/s (median
  and range of the timed rounds) beside one CPU core's rate on the uint8 pipeline, the figure
  docs/data-loading.md compares with FFCV's per core.
- train: ClassificationModule (CSA-ResNet-18) on the in-memory digits, bf16-mixed, one device,
  300 steps to >= 90 % val top-1; a fit resumed from its last checkpoint; DetectionModule (Faster
  R-CNN, CSA-R18-FPN, digits canvases) ``fast_dev_run``; Lightning's DDP strategy with one
  process over NCCL; the digits through FFCV's loader (skipped, with one line, where ffcv is not
  installed, as on the lent GPU machines).

Writes ``report.md`` and ``report.json`` to ``--out`` and exits non-zero when any check fails.
``--device cpu --quick`` is a dry run of the same code paths (tiny sizes, no thresholds on speed or
accuracy) that ``make test`` runs.

On the lent GPU machine (Python 3.12, torch 2.11, torchvision 0.26, lightning, torchmetrics,
scikit-learn; no jsonargparse, pycocotools or faster-coco-eval; nothing can be downloaded there):

1. here, in the repository root, fetch the binary wheels the detection check needs::

       echo /.whl/ >> .git/info/exclude
       python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
           --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \\
           --platform manylinux2014_x86_64 -d .whl pycocotools==2.0.11 faster-coco-eval==1.8.0

2. run with ``.whl`` carried, from the repository root (the package is not installed there)::

       python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \\
           && PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_check.py --out $OUT

A check that cannot run for want of a package it only uses (ffcv) is reported as skipped with one
line saying why; any other missing package is a failed check with its one-line reason.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from csa_lightning.attention import available_attentions, build_attention, resolve_attention  # noqa: E402
from csa_lightning.attention.csa_options import CONTIGUITY_MODES, DISTANCE_MODES  # noqa: E402
from csa_lightning.blockcheck.correctness import BlockUnderTest, check_autocast, correlated_map  # noqa: E402

SECTIONS = ("numerics", "speed", "decode", "train")
#: the authors' detection backbone: CSA in every block, distances from pooled maps, contiguity "hybrid"
AUTHORS_VARIANT = (
    "csa authors (every block, pooled)",
    "csa",
    {"placement": "every_block", "contiguity": "hybrid", "distance": "pooled"},
)
#: the PyTorch path of CSA's w z (the default on CUDA is the fused Triton kernels), for comparison
TORCH_KERNEL_VARIANT = ("csa (l2, torch kernel)", "csa", {"contiguity": "l2", "kernel": "torch"})
#: the paper's Table 4 (their GPU, batch 128 at 224 px), seconds
PAPER_TABLE4 = {"none": (0.134, 0.133), "se": (0.426, 0.290), "csa (l2)": (0.508, 0.281)}


class Skip(Exception):
    """Raised by a check that cannot run here (a package missing on the lent machine): recorded as
    skipped, with the one-line reason, neither passed nor failed."""


class Report:
    """Checks as they run: name, pass/fail/skipped, a one-line detail, seconds; tables for the markdown."""

    def __init__(self, out: Optional[Path] = None, environment: Optional[Dict[str, str]] = None) -> None:
        self.checks: List[Dict[str, Any]] = []
        self.tables: List[str] = []
        self.data: Dict[str, Any] = {}
        self.out, self.environment = out, environment or {}

    def run(self, section: str, name: str, fn: Callable[[], Optional[str]]) -> None:
        start = time.perf_counter()
        skipped = False
        try:
            detail, ok = fn() or "", True
        except Skip as reason:
            detail, ok, skipped = str(reason), True, True
        except AssertionError as err:
            detail, ok = str(err).splitlines()[0] if str(err) else "assertion failed", False
        except Exception as err:  # a crash is a failed check, with its last line
            detail, ok = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", False
            traceback.print_exc()
        seconds = time.perf_counter() - start
        self.checks.append(
            {
                "section": section,
                "check": name,
                "ok": ok,
                "skipped": skipped,
                "detail": detail,
                "seconds": round(seconds, 2),
            }
        )
        status = "SKIP" if skipped else "PASS" if ok else "FAIL"
        print(f"[{status}] {section}: {name} ({seconds:.1f} s) {detail}", flush=True)
        if self.out is not None:  # after every check: a run killed at its time limit keeps what it measured
            self.write(self.out, self.environment)

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks)

    def write(self, out: Path, environment: Dict[str, str]) -> None:
        out.mkdir(parents=True, exist_ok=True)
        lines = ["# csa-lightning GPU check", ""]
        lines += [f"- {k}: {v}" for k, v in environment.items()]
        skipped = sum(c.get("skipped", False) for c in self.checks)
        passed = sum(c["ok"] and not c.get("skipped", False) for c in self.checks)
        lines += [
            "",
            f"**{passed} of {len(self.checks) - skipped} checks passed"
            + (f" ({skipped} skipped: see below).**" if skipped else ".**"),
            "",
            "| section | check | result | s | detail |",
            "|---|---|---|---:|---|",
        ]
        for c in self.checks:
            detail = c["detail"].replace("|", "/")
            result = "skipped" if c.get("skipped") else "pass" if c["ok"] else "**FAIL**"
            lines.append(f"| {c['section']} | {c['check']} | {result} | {c['seconds']} | {detail} |")
        lines += ["", "\n\n".join(self.tables)]
        (out / "report.md").write_text("\n".join(lines) + "\n")
        payload = {"environment": environment, "ok": self.ok, "checks": self.checks, **self.data}
        (out / "report.json").write_text(json.dumps(payload, indent=2) + "\n")


def environment(device: torch.device) -> Dict[str, str]:
    env = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda (torch build)"] = str(torch.version.cuda)
        try:
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = "unknown (nvidia-smi not found)"
    else:
        env["cpu"] = f"{platform.machine()}, {torch.get_num_threads()} torch threads"
    for name in ("lightning", "torchmetrics", "torchvision", "triton"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = "not installed"
    return env


# ------------------------------------------------------------------------------------ numerics


def block_variants() -> List[tuple]:
    """(label, name, options) for every block, and CSA in every mode."""
    variants = []
    for name in available_attentions():
        if name == "none":
            continue
        if name != "csa":
            variants.append((name, name, {}))
            continue
        for contiguity in CONTIGUITY_MODES:
            for grad in (False, True):
                for distance in DISTANCE_MODES:
                    options = dict(contiguity=contiguity, contiguity_grad=grad, distance=distance)
                    if distance == "projected":
                        options["projection_dim"] = 16
                    if distance == "pooled":
                        options["pool_size"] = 4  # 7 x 7 maps -> 4 x 4 (overlapping adaptive windows)
                    label = f"csa {contiguity}{' grad' if grad else ''}{'' if distance == 'exact' else ' ' + distance}"
                    variants.append((label, name, options))
                    if not grad:  # w z without w: the fused kernels (default on CUDA) and the PyTorch path
                        variants.append((label + " torch-kernel", name, {**options, "kernel": "torch"}))
    return variants


def check_block_against_float64(name: str, options: dict, device: torch.device, channels: int, side: int = 7) -> str:
    torch.manual_seed(0)
    reference = build_attention(name, channels, **options).double()
    with torch.no_grad():  # non-trivial weights: random biases keep the MLP's hidden units active
        for p in reference.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    candidate = build_attention(name, channels, **options)
    candidate.load_state_dict({k: v.float() for k, v in reference.state_dict().items()})
    candidate.to(device)
    x64 = correlated_map((2, channels, side, side), seed=1, dtype=torch.float64)
    upstream = torch.randn(x64.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x64.requires_grad_(True)
    y64 = reference(x64)
    (y64 * upstream).sum().backward()
    x32 = x64.detach().float().to(device).requires_grad_(True)
    y32 = candidate(x32)
    (y32 * upstream.float().to(device)).sum().backward()
    out_err = float((y32.double().cpu() - y64).abs().max() / y64.abs().max())
    grad_err = float((x32.grad.double().cpu() - x64.grad).abs().max() / x64.grad.abs().max())
    assert out_err <= 1e-4, f"output off by {out_err:.2e} of its largest value (limit 1e-4)"
    assert grad_err <= 1e-3, f"input gradient off by {grad_err:.2e} of its largest value (limit 1e-3)"
    return f"output {out_err:.1e}, input gradient {grad_err:.1e} (relative to the largest value)"


def check_autocast_finite(name: str, options: dict, device: torch.device, dtype: torch.dtype) -> str:
    """The block check kit's autocast check (degenerate inputs finite, agreement with fp32) on this device."""
    block = BlockUnderTest(name, resolve_attention(name), options)
    return check_autocast(block, quick=False, device=device, dtypes=(dtype,))


def check_zero_init_resnet(device: torch.device, dtype: torch.dtype, size: int) -> str:
    from csa_lightning.models import attention_resnet

    torch.manual_seed(0)
    model = attention_resnet(18, "csa", num_classes=10, zero_init_residual=True).to(
        device, memory_format=torch.channels_last
    )
    x = torch.randn(2, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=dtype):
        out = model(x)
    out.float().logsumexp(1).sum().backward()
    assert torch.isfinite(out.float()).all(), "non-finite logits"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad[:3]}"
    return "CSA-R18, zero-initialised last BN, channels_last: finite logits and gradients"


def numerics(report: Report, device: torch.device, quick: bool) -> None:
    saved_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here; restored for the other sections
    torch.backends.cudnn.allow_tf32 = False
    try:
        _numerics(report, device, quick)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_tf32


def _numerics(report: Report, device: torch.device, quick: bool) -> None:
    variants = block_variants()
    for label, name, options in variants:
        # 256 channels: CSA's blocked Gram path (2 x 2 blocks) as at ResNet stages; 32 in a dry run
        channels = 32 if quick else 256
        report.run(
            "numerics",
            f"{label}: fp32 {device.type} vs float64 cpu",
            lambda: check_block_against_float64(name, options, device, channels),
        )
    # a long map: the fused kernels' K loop in many steps (layer1..2's tile configuration)
    side = 8 if quick else 28
    for kernel in ("auto", "torch"):
        report.run(
            "numerics",
            f"csa l2 {kernel}-kernel, {side} x {side} maps: fp32 {device.type} vs float64 cpu",
            lambda: check_block_against_float64("csa", {"kernel": kernel}, device, 32 if quick else 256, side),
        )
    for dtype in (torch.bfloat16, torch.float16):
        for label, name, options in variants if not quick else variants[::4]:
            report.run(
                "numerics",
                f"{label}: {str(dtype)[6:]} autocast, degenerate inputs",
                lambda: check_autocast_finite(name, options, device, dtype),
            )
        report.run(
            "numerics",
            f"CSA-R18 {str(dtype)[6:]} autocast, zero-init BN",
            lambda: check_zero_init_resnet(device, dtype, 32),
        )


# --------------------------------------------------------------------------------------- speed


def speed(report: Report, device: torch.device, quick: bool, repeats: int = 5) -> None:
    from csa_lightning.benchmark import benchmark, to_markdown

    attentions = ["none", "se", "csa"] if quick else ["none", "se", "cbam", "eca", "gct", "csa"]
    modes = ("l2",) if quick else ("l2", "hybrid")
    settings = (
        [dict(depth=18, batch=2, size=32, repeats=1)]
        if quick
        else [
            dict(depth=50, batch=128, size=224, repeats=repeats),
            dict(depth=50, batch=64, size=224, repeats=repeats),
        ]
    )
    report.data["speed"] = []
    for setting in settings:

        def run(setting=setting) -> str:
            rows = benchmark(
                attentions=attentions,
                csa_modes=modes,
                device=str(device),
                bf16=True,
                channels_last=True,
                extra_variants=[TORCH_KERNEL_VARIANT, AUTHORS_VARIANT],
                **setting,
            )
            report.data["speed"].append({"setting": setting, "rows": rows})
            title = (
                f"ResNet-{setting['depth']}, batch {setting['batch']} at {setting['size']} px, bf16 autocast, "
                f"channels_last, {device.type}, median of {setting['repeats']}"
            )
            report.tables.append(to_markdown(rows, "### " + title))
            if setting["batch"] == 128:
                report.tables.append(paper_comparison(rows))
            assert all(r["train_s"] > 0 and r["infer_s"] > 0 for r in rows), "a time is not positive"
            csa = next(r for r in rows if r["variant"] == "csa (l2)")
            return (
                f"CSA (l2) x{csa['train_ratio']:.2f} training, x{csa['infer_ratio']:.2f} inference "
                f"of ResNet-{setting['depth']}"
            )

        report.run("speed", f"benchmark batch {setting['batch']}", run)


def _photo_jpegs(count: int, folder: Path) -> List[bytes]:
    """``count`` photo-like JPEGs (500 x 375 or a quarter portrait, quality 90) cut from scikit-learn's
    two sample photos by the loader benchmark's writer (scikit-image's photos are not on the lent
    GPU machines)."""
    from sklearn.datasets import load_sample_images

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from loader_throughput import _write_cuts

    tree = _write_cuts(folder, count, 0, list(load_sample_images().images), (500, 375), zoom=(1.0, 1.6))
    return [path.read_bytes() for path in sorted(tree.glob("*/*.jpg"))]


def decode(report: Report, device: torch.device, quick: bool, workdir: Path, repeats: int = 5) -> None:
    from csa_lightning.data.device_decode import DeferredRandomResizedCrop, decode_batch
    from csa_lightning.data.uint8_pipeline import RandomResizedCropUint8, psnr

    batch = 8 if quick else 256
    files = _photo_jpegs(batch, workdir / "photos")

    def pixels() -> str:
        torch.manual_seed(0)
        handed = [DeferredRandomResizedCrop(224)(data) for data in files]
        on_device = decode_batch(handed, device).cpu()
        on_cpu = decode_batch(handed, "cpu")
        worst = min(psnr(a, b) for a, b in zip(on_device, on_cpu))
        largest = int((on_device.int() - on_cpu.int()).abs().max())
        report.data["decode_pixels"] = {"min_psnr_db": worst, "max_abs_difference": largest, "images": batch}
        assert worst >= 30, f"PSNR {worst:.1f} dB against the CPU's decoding, below the 30 dB contract"
        return f"{batch} crops against the CPU's decoding: PSNR at least {worst:.1f} dB, largest difference {largest}"

    def rate() -> str:
        import statistics

        torch.manual_seed(0)
        rounds = 1 if quick else repeats
        handed = [DeferredRandomResizedCrop(224)(data) for data in files]
        decode_batch(handed, device)  # warm-up: nvJPEG's handles, the resize kernels
        device_rates = []
        for _ in range(rounds):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            decode_batch(handed, device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            device_rates.append(batch / (time.perf_counter() - start))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            crop = RandomResizedCropUint8(224, dct_scaling=False)
            cpu_rates = []
            for _ in range(rounds):
                start = time.perf_counter()
                for data in files:
                    crop(data)
                cpu_rates.append(batch / (time.perf_counter() - start))
        finally:
            torch.set_num_threads(threads)

        def spread(rates: List[float]) -> str:
            return f"{statistics.median(rates):,.0f} images/s ({min(rates):,.0f}-{max(rates):,.0f})"

        report.data["decode_rate"] = {"device": device_rates, "cpu_one_core": cpu_rates, "batch": batch}
        report.tables.append(
            "\n".join(
                [
                    f"### Decoding photo-like JPEGs (500 x 375) to 224 px crops, batch {batch}, median of {rounds}",
                    "",
                    "| where | rate (lowest-highest) |",
                    "|---|---:|",
                    f"| {device.type}: decode_batch (data.pipeline nvjpeg) | {spread(device_rates)} |",
                    f"| one CPU core: the uint8 pipeline (data.pipeline uint8, no DCT scaling) | {spread(cpu_rates)} |",
                ]
            )
        )
        return f"{device.type} {spread(device_rates)}; one CPU core {spread(cpu_rates)}"

    report.run("decode", "nvJPEG crops against the CPU's", pixels)
    report.run("decode", f"decode rate, batch {batch}", rate)


def paper_comparison(rows: List[Dict[str, Any]]) -> str:
    lines = [
        "",
        "Beside the paper's Table 4 (their GPU, batch 128, precision not stated):",
        "",
        "| variant | train s (paper) | x R50 (paper) | train s (here) | x none (here) "
        "| inference s (paper) | x R50 (paper) | inference s (here) | x none (here) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_name = {r["variant"]: r for r in rows}
    base_train, base_infer = PAPER_TABLE4["none"]
    for name, (train, infer) in PAPER_TABLE4.items():
        r = by_name.get(name)
        if r is None:
            continue
        lines.append(
            f"| {name} | {train:.3f} | {train / base_train:.2f} | {r['train_s']:.3f} | {r['train_ratio']:.2f} | "
            f"{infer:.3f} | {infer / base_infer:.2f} | {r['infer_s']:.3f} | {r['infer_ratio']:.2f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- train


def _trainer(device: torch.device, root: str, **kwargs):
    import lightning as L

    options = dict(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    options.update(kwargs)
    return L.Trainer(**options)


def _demo_model(config: str) -> dict:
    """The model section of a demo config."""
    import yaml

    return yaml.safe_load((ROOT / "configs" / "demo" / config).read_text())["model"]


def _demo_task(config: str, **overrides):
    """The task of a demo config (its network and recipe), built from the YAML's model section: the
    kit runs what ``make demo`` runs, without a second copy of its values (no jsonargparse needed)."""
    import importlib

    model = _demo_model(config)
    module_name, _, name = model["class_path"].rpartition(".")
    return getattr(importlib.import_module(module_name), name)(**{**model["init_args"], **overrides})


def _classifier():
    return _demo_task("digits_csa.yaml")


def train(report: Report, device: torch.device, quick: bool, workdir: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from csa_lightning.data import DigitsMemoryDataModule

    steps = 4 if quick else 300
    precision = "bf16-mixed"
    val_batches = 1 if quick else 1.0  # an int: one batch (a float 1.0 is all of them)
    batch = 16 if quick else 64  # a dry run is about code paths: bf16 convolutions are slow on a CPU
    root = str(workdir / "classification")
    state: Dict[str, Any] = {}

    def fit() -> str:
        import lightning as L

        L.seed_everything(0, verbose=False)
        checkpoint = ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=max(1, steps // 2))
        trainer = _trainer(
            device,
            root,
            max_steps=steps,
            precision=precision,
            callbacks=[checkpoint],
            val_check_interval=steps,
            check_val_every_n_epoch=None,
            num_sanity_val_steps=0,
            limit_val_batches=val_batches,
        )
        module, data = _classifier(), DigitsMemoryDataModule(batch_size=batch)
        trainer.fit(module, data)
        top1 = float(trainer.callback_metrics["val/top1"])
        state["last"], state["top1"] = checkpoint.last_model_path, top1
        assert trainer.global_step == steps, f"stopped at step {trainer.global_step}, not {steps}"
        assert quick or top1 >= 0.90, f"val top-1 {top1:.3f} after {steps} steps (needs >= 0.90)"
        return f"CSA-R18, {precision}, {steps} steps: val top-1 {top1:.4f}"

    def resume() -> str:
        assert state.get("last"), "no last checkpoint from the fit above"
        more = steps + max(2, steps // 10)
        trainer = _trainer(
            device,
            root,
            max_steps=more,
            precision=precision,
            val_check_interval=more,
            check_val_every_n_epoch=None,
            num_sanity_val_steps=0,
            limit_val_batches=val_batches,
        )
        trainer.fit(_classifier(), DigitsMemoryDataModule(batch_size=batch), ckpt_path=state["last"])
        assert trainer.global_step == more, f"resumed run ended at step {trainer.global_step}, not {more}"
        top1 = float(trainer.callback_metrics["val/top1"])
        assert quick or top1 >= 0.90, f"resumed run's val top-1 {top1:.3f}"
        return f"resumed from step {steps} to {more}: val top-1 {top1:.4f}"

    def detection() -> str:
        from csa_lightning.data import DigitsCOCODataModule

        # the digits detection demo's slim heads and recipe; no backbone file, and a warm-up that ends
        schedule = _demo_model("digits_faster_rcnn_csa.yaml")["init_args"]["lr_schedule"]
        schedule = {**schedule, "init_args": {**schedule["init_args"], "warmup_iters": 2}}
        module = _demo_task("digits_faster_rcnn_csa.yaml", backbone_weights=None, lr_schedule=schedule)
        # --quick: 64 px canvases, one batch of two (Faster R-CNN's bf16 step on a CPU took 55 s at 128 px, 4 x 2)
        size = dict(canvas_size=64, digit_size=(12, 28), num_train=4, num_val=2, batch_size=2) if quick else {}
        data = DigitsCOCODataModule(
            data_dir=str(workdir / "digits_coco"),
            **{"num_train": 16, "num_val": 8, "batch_size": 4, **size},
            num_workers=0,
        )
        runs = 1 if quick else 2
        trainer = _trainer(device, str(workdir / "detection"), fast_dev_run=runs, precision=precision)
        trainer.fit(module, data)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/box")}
        assert "val/box_AP" in metrics, f"no val/box_AP logged ({sorted(trainer.callback_metrics)})"
        assert all(math.isfinite(v) for v in metrics.values()), f"non-finite metric {metrics}"
        return f"Faster R-CNN CSA-R18-FPN fast_dev_run({runs}): val/box_AP {metrics['val/box_AP']:.4f}"

    def ddp() -> str:
        import lightning as L
        import torch.distributed as dist

        L.seed_everything(0, verbose=False)
        backend = "nccl" if device.type == "cuda" else "gloo"
        strategy = L.pytorch.strategies.DDPStrategy(process_group_backend=backend)
        trainer = _trainer(
            device,
            str(workdir / "ddp"),
            strategy=strategy,
            max_steps=4,
            limit_val_batches=2,
            val_check_interval=4,
            check_val_every_n_epoch=None,
            num_sanity_val_steps=0,
            precision=precision,
        )
        trainer.fit(_classifier(), DigitsMemoryDataModule(batch_size=batch))
        used = dist.get_backend() if dist.is_initialized() else "none"
        if dist.is_initialized():
            dist.destroy_process_group()
        assert used == backend, f"process group backend {used}, expected {backend}"
        top1 = float(trainer.callback_metrics["val/top1"])
        return f"DDPStrategy, 1 process, backend {used}: 4 steps, val/top1 {top1:.3f}"

    def ffcv_fit() -> str:
        import lightning as L

        from csa_lightning.data.ffcv_imagenet import import_ffcv

        if quick:  # importing ffcv and compiling its pipeline alone take ~14 s of a 30 s dry run
            raise Skip("--quick: the FFCV path is tested on the CPU by make test (tests/test_ffcv_data.py)")
        try:
            import_ffcv()
        except ImportError as err:
            raise Skip(f"{str(err).split(';')[0]}: the FFCV path is tested on the CPU by make test") from None
        from csa_lightning.data import DigitsDataModule

        L.seed_everything(0, verbose=False)
        ffcv_steps = 20
        trainer = _trainer(
            device,
            str(workdir / "ffcv"),
            max_steps=ffcv_steps,
            precision=precision,
            val_check_interval=ffcv_steps,
            check_val_every_n_epoch=None,
            num_sanity_val_steps=0,
            limit_val_batches=2,
        )
        # the digits written as JPEG betons, decoded by ffcv's loader straight onto the device
        data = DigitsDataModule(data_dir=str(workdir / "digits_ffcv"), batch_size=64)
        trainer.fit(_classifier(), data)
        assert trainer.global_step == ffcv_steps, f"stopped at step {trainer.global_step}, not {ffcv_steps}"
        top1 = float(trainer.callback_metrics["val/top1"])
        return f"CSA-R18 on the digits betons through ffcv's loader, {ffcv_steps} steps: val top-1 {top1:.3f}"

    report.run("train", f"classification fit {steps} steps", fit)
    report.run("train", "classification resume from last checkpoint", resume)
    report.run("train", "FFCV data module fit", ffcv_fit)
    report.run("train", "detection fast_dev_run", detection)
    report.run("train", "DDP strategy, 1 process", ddp)  # last: it leaves Lightning's DDP environment behind


# ---------------------------------------------------------------------------------------- main


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/gpu-check", help="folder for report.md and report.json")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and no thresholds: a dry run of the code paths"
    )
    parser.add_argument(
        "--speed-repeats", type=int, default=5, help="timed rounds per variant in the speed section (median)"
    )
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            "--device cuda: no CUDA device is visible (run on a GPU machine, or --device cpu --quick for a dry run)"
        )
    device = torch.device(args.device)
    env = environment(device)
    report = Report(Path(args.out), env)
    print("\n".join(f"{k}: {v}" for k, v in env.items()), flush=True)
    with tempfile.TemporaryDirectory(prefix="csa-gpu-check-") as tmp:
        os.environ.setdefault("PYTHONWARNINGS", "ignore")
        for section in SECTIONS:
            if section not in sections:
                continue
            if section == "numerics":
                numerics(report, device, args.quick)
            elif section == "speed":
                speed(report, device, args.quick, args.speed_repeats)
            elif section == "decode":
                decode(report, device, args.quick, Path(tmp))
            else:
                train(report, device, args.quick, Path(tmp))
    report.write(Path(args.out), env)
    failed = [c for c in report.checks if not c["ok"]]
    print(
        f"{len(report.checks) - len(failed)} of {len(report.checks)} checks passed; "
        f"report in {Path(args.out) / 'report.md'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
