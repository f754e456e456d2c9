"""How close CSA's projected distances keep q and p to the exact ones, on real photos.

    python benchmarks/projected_distances.py [--sizes 224,800] [--k 64] [--depth 50]

Photos: the ones scikit-image ships (astronaut, coffee, chelsea, rocket, hubble_deep_field,
immunohistochemistry), resized so the short side is each size (the long side capped at
1333 / 800 of it, as torchvision's detection transform does), ImageNet-normalised. Model: a CSA
attention ResNet (random weights, seed 0: no pretrained weights can be downloaded here; BN in eval
mode). For every CSA gate (the end of each stage), Spearman's rank correlation over channels
between the exact and the projected q and p, and the time of the descriptor computation on the
gate's input, exact vs projected. Needs scikit-image (pip install scikit-image).
"""

import argparse
import statistics
import sys

import torch

from csa_lightning.benchmark import projection_agreement
from csa_lightning.models import attention_resnet

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def load_photos(short_side: int):
    try:
        import skimage.data
    except ImportError:
        sys.exit("error: this benchmark needs scikit-image's sample photos: pip install scikit-image")
    import torch.nn.functional as F

    from csa_lightning.data import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    images = []
    for name in PHOTOS:
        pixels = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1).float() / 255
        h, w = pixels.shape[1:]
        scale = min(short_side / min(h, w), short_side * 1333 / 800 / max(h, w))
        size = (round(h * scale), round(w * scale))
        images.append(((F.interpolate(pixels[None], size=size, mode="bilinear", antialias=True) - mean) / std))
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="224,800")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--depth", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = attention_resnet(args.depth, "csa").eval()
    print(
        "| short side | gate | channels | map | projected | Spearman q mean (min) | Spearman p mean (min) "
        "| exact ms | projected ms | speed-up |"
    )
    print("|---:|---|---:|---|---|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        rows = projection_agreement(model, load_photos(size), projection_dim=args.k)
        for gate in dict.fromkeys(r["gate"] for r in rows):
            mine = [r for r in rows if r["gate"] == gate]
            q = [r["rho_q"] for r in mine]
            p = [r["rho_p"] for r in mine]
            exact = statistics.median(r["exact_s"] for r in mine) * 1000
            proj = statistics.median(r["projected_s"] for r in mine) * 1000
            maps = sorted({r["map"] for r in mine}, key=lambda m: int(m.split("x")[0]) * int(m.split("x")[1]))
            shown = maps[0] if len(maps) == 1 else f"{maps[0]}..{maps[-1]}"
            used = {r["projected"] for r in mine}
            projected = "yes" if used == {True} else "no (H*W <= k)" if used == {False} else "where H*W > k"
            print(
                f"| {size} | {gate} | {mine[0]['channels']} | {shown} | {projected} | "
                f"{statistics.mean(q):.3f} ({min(q):.3f}) | {statistics.mean(p):.3f} ({min(p):.3f}) | "
                f"{exact:.1f} | {proj:.1f} | {exact / proj:.1f}x |"
            )


if __name__ == "__main__":
    main()
