"""Export each attention ResNet-18 to ONNX (dynamo exporter, opset 18, dynamic batch) and check it
with onnxruntime against PyTorch: the whole-network check the test suite does for CSA-ResNet-18 only.

    python benchmarks/export_every_resnet18.py [--size 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from csa_lightning.export import check_export, export_model  # noqa: E402
from csa_lightning.models import attention_resnet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    failed = False
    for attention in ("none", "se", "cbam", "eca", "gct", "csa"):
        torch.manual_seed(0)
        model = attention_resnet(18, attention, num_classes=10).eval()
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            path = export_model(model, "onnx", f"{tmp}/model.onnx", args.size)
            difference, tolerance = check_export(model, path, "onnx", args.size)
        ok = difference <= tolerance
        failed |= not ok
        print(f"{attention}-R18: largest difference {difference:.2e} (tolerance {tolerance:.2e}) "
              f"{'ok' if ok else 'FAILED'}, {time.perf_counter() - start:.0f} s")  # fmt: skip
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
