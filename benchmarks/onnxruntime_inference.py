"""Inference of an attention ResNet in PyTorch (eager, eval) against its ONNX export in onnxruntime.

    python benchmarks/onnxruntime_inference.py [--depth 50] [--attentions none,csa] [--batch 8] [--size 224]

For each attention: export through ``csa_lightning.export.export_model`` (dynamo exporter, opset 18,
dynamic batch), then time PyTorch and onnxruntime (CPUExecutionProvider, default session options)
on the same random batch, interleaved, median of ``--repeats`` after a warm-up; prints seconds per
batch, the ratio onnxruntime / PyTorch and the largest output difference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from csa_lightning.export import export_model  # noqa: E402
from csa_lightning.models import attention_resnet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--attentions", default="none,csa")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import onnxruntime

    print(f"ResNet-{args.depth}, batch {args.batch} at {args.size} px, {torch.get_num_threads()} threads, "
          f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}")  # fmt: skip
    print("| model | PyTorch s / batch | onnxruntime s / batch | onnxruntime / PyTorch | max difference |")
    print("|---|---:|---:|---:|---:|")
    for attention in args.attentions.split(","):
        torch.manual_seed(0)
        model = attention_resnet(args.depth, attention, num_classes=1000).eval()
        x = torch.randn(args.batch, 3, args.size, args.size)
        with tempfile.TemporaryDirectory() as tmp:
            path = export_model(model, "onnx", str(Path(tmp) / "model.onnx"), args.size)
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            feed = {name: x.numpy()}
            with torch.no_grad():
                expected = model(x)
            got = torch.from_numpy(session.run(None, feed)[0])
            times = {"torch": [], "ort": []}
            for _ in range(args.repeats):
                start = time.perf_counter()
                with torch.no_grad():
                    model(x)
                times["torch"].append(time.perf_counter() - start)
                start = time.perf_counter()
                session.run(None, feed)
                times["ort"].append(time.perf_counter() - start)
        pt, ort = statistics.median(times["torch"]), statistics.median(times["ort"])
        label = "ResNet" if attention == "none" else f"{attention.upper()}-ResNet"
        difference = float((got - expected).abs().max())
        print(f"| {label}-{args.depth} | {pt:.3f} | {ort:.3f} | {ort / pt:.2f} | {difference:.1e} |")


if __name__ == "__main__":
    main()
