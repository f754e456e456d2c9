"""Efficiency of attention ResNets: the CSA paper's Table 4, extended.

    python -m csa_lightning.benchmark --depth 50 --attentions none,se,cbam,eca,gct,csa --batch 8 --size 224 \\
        [--csa-modes l2,hybrid,cosine] [--csa-grad] [--csa-projected] [--repeats 3]
        [--format markdown|json] [--out FILE] [--device cuda --bf16 --channels-last] [--variant ...]

For each variant, in one process and interleaved (variant A, B, C, then A, B, C again...), after
one warm-up round: the time of a training step (forward, backward, SGD step; the second of two in
a row, so that no variant pays for the previous one's memory) and of inference
(eval mode, no_grad) on one random batch, median over ``repeats``; their ratios to the
no-attention model of the same run; the bytes saved for backward (distinct storages seen by
``torch.autograd.graph.saved_tensors_hooks`` during one training forward: exact on CPU); params
and GMAC (see ``csa_lightning.models.summary``). ``--device cuda`` times on the GPU instead (CUDA
events), with the step's peak memory above what is resident (activations and workspaces) and its
ratio; ``--variant 'LABEL|ATTENTION|{"placement": ..., option: ...}'`` adds rows; ``--bf16`` and
``--channels-last`` give a GPU recipe.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .attention import PAPER_ATTENTIONS, attention_name
from .attention.csa_options import CONTIGUITY_MODES
from .checks import MAX_IMAGE_SIDE, require_writable_file
from .errors import ToolParser, command, int_in, list_option, positive_int
from .models.attention_resnet import RESNET_LAYOUTS
from .models.summary import build_variant, count_cost, parse_variant
from .timing import STABLE_SPREAD, Ratio, paired_ratio

__all__ = ["saved_tensor_bytes", "benchmark", "projection_agreement", "main"]


def saved_tensor_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward during one forward of ``model``."""
    storages: Dict[Tuple[int, int], int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        storages[(storage.data_ptr(), t.device.index or 0)] = storage.nbytes()
        # not ``t`` itself: a saved output packed as itself holds its own grad_fn, a reference cycle
        # through C++ that Python's gc cannot see, which kept every model's graph (and, on a GPU, one
        # batch's activations per variant) alive after the benchmark returned
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(storages.values())


def _variants(
    attentions: Sequence[str], csa_modes: Sequence[str], csa_grad: bool, csa_projected: bool = False
) -> List[Tuple[str, str, dict]]:
    """(label, attention, options) per variant; options may hold "placement" besides the gate's own."""
    variants: List[Tuple[str, str, dict]] = []
    for attention in attentions:
        if attention == "csa":
            for mode in csa_modes:
                variants.append((f"csa ({mode})", "csa", {"contiguity": mode}))
                if csa_grad:
                    variants.append(
                        (f"csa ({mode}, contiguity_grad)", "csa", {"contiguity": mode, "contiguity_grad": True})
                    )
                if csa_projected:
                    variants.append(
                        (f"csa ({mode}, projected k=64)", "csa", {"contiguity": mode, "distance": "projected"})
                    )
        else:
            variants.append((attention, attention, {}))
    return variants


def _timed(fn, device: torch.device) -> float:
    """Seconds ``fn`` takes: CUDA events on a GPU (the kernels' time, not the launch queue's),
    the wall clock on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    start_s = time.perf_counter()
    fn()
    return time.perf_counter() - start_s


def training_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, bf16: bool
) -> None:
    """One SGD step on cross-entropy, the forward under bf16 autocast when ``bf16``: what is timed."""
    model.train()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = nn.functional.cross_entropy(model(x).float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def inference(model: nn.Module, x: torch.Tensor, bf16: bool) -> None:
    """One forward in eval mode without autograd, under bf16 autocast when ``bf16``."""
    model.eval()
    with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        model(x)


def benchmark(
    depth: int = 50,
    attentions: Sequence[str] = PAPER_ATTENTIONS,
    batch: int = 8,
    size: int = 224,
    repeats: int = 3,
    csa_modes: Sequence[str] = ("l2",),
    csa_grad: bool = False,
    device: str = "cpu",
    csa_projected: bool = False,
    bf16: bool = False,
    channels_last: bool = False,
    extra_variants: Sequence[Tuple[str, Any, dict]] = (),
    max_repeats: Optional[int] = None,
) -> List[Dict[str, Any]]:
    """Rows of measurements, one per variant; ratios are to the "none" row of the same run.

    Each time ratio is the median of the rounds' paired ratios (variant / plain of the same round,
    `csa_lightning.timing.paired_ratio`), with the range of its middle rounds; after ``repeats``
    rounds, more are run while any ratio is unstable, up to ``max_repeats`` (default 3 x
    ``repeats``, at least 5). ``bf16``: forward under bf16 autocast; ``channels_last``: model and
    input in that memory format (what a GPU run uses). ``extra_variants``: more (label, attention,
    options) rows, where options may hold "placement" (e.g. CSA in every block) besides the gate's
    own options."""
    dev = torch.device(device)
    if dev.type == "cuda":  # an earlier run's models must not count here
        import gc

        gc.collect()
        torch.cuda.empty_cache()
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=memory_format)
    y = torch.randint(0, 1000, (batch,), device=dev)
    setups = []
    for name, attention, options in [*_variants(attentions, csa_modes, csa_grad, csa_projected), *extra_variants]:
        model = build_variant(depth, attention, options).to(dev).to(memory_format=memory_format)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        setups.append(
            {
                "name": name,
                "attention": attention,
                "options": options,
                "model": model,
                "opt": optimizer,
                "train": [],
                "infer": [],
            }
        )

    def train_step(s):
        training_step(s["model"], s["opt"], x, y, bf16)

    def infer(s):
        inference(s["model"], x, bf16)

    limit = max(repeats, max_repeats if max_repeats is not None else max(5, 3 * repeats))
    base = next((s for s in setups if s["name"] == "none"), setups[0])

    def unstable() -> bool:
        return any(
            not paired_ratio(s[kind], base[kind]).stable for s in setups if s is not base for kind in ("train", "infer")
        )

    round_ = 0
    while round_ <= repeats or (round_ <= limit and unstable()):  # round 0 warms up (allocator, kernels, caches)
        # every other round in reverse order: a variant's place in the round (first after the previous
        # round's last, say) must not favour it
        for s in setups if round_ % 2 == 0 else setups[::-1]:
            # the first step after another variant pays for its memory being freed and re-allocated:
            # time the second of two consecutive steps
            train_step(s)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                held = torch.cuda.memory_allocated(dev)
            t_train = _timed(lambda: train_step(s), dev)
            if dev.type == "cuda":
                # what one training step adds on top of what is resident (every variant's weights,
                # gradients and momenta stay on the device): activations and workspaces
                s["peak_mb"] = (torch.cuda.max_memory_allocated(dev) - held) / 2**20
            t_infer = _timed(lambda: infer(s), dev)
            if round_ > 0:
                s["train"].append(t_train)
                s["infer"].append(t_infer)
        round_ += 1
    rows = []
    for s in setups:
        s["model"].train()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            saved = saved_tensor_bytes(s["model"], x)
        with torch.device("meta"):
            params, gmac = count_cost(build_variant(depth, s["attention"], s["options"]), size)
        rows.append(
            {
                "variant": s["name"],
                "params": params,
                "gmac": round(gmac, 3),
                "train_s": statistics.median(s["train"]),
                "infer_s": statistics.median(s["infer"]),
                "saved_mb": saved / 2**20,
                "peak_mb": s.get("peak_mb"),
                "rounds": len(s["train"]),
            }
        )
        for kind in ("train", "infer"):
            ratio = paired_ratio(s[kind], base[kind])
            rows[-1].update({f"{kind}_ratio": ratio.median, f"{kind}_ratio_range": [ratio.low, ratio.high],
                             f"{kind}_ratio_stable": ratio.stable})  # fmt: skip
    plain = rows[setups.index(base)]
    for r in rows:
        r["saved_ratio"] = r["saved_mb"] / plain["saved_mb"]
        r["peak_ratio"] = r["peak_mb"] / plain["peak_mb"] if r["peak_mb"] and plain["peak_mb"] else None
    return rows


def ratio_text(row: Dict[str, Any], kind: str) -> str:
    """A row's time ratio with its range over the rounds, marked unstable where the range is too wide."""
    low, high = row[f"{kind}_ratio_range"]
    return Ratio(row[f"{kind}_ratio"], low, high, row["rounds"]).text()


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors (Pearson's r of their ranks)."""
    ranks = [torch.argsort(torch.argsort(v)).double() for v in (a, b)]
    ra, rb = (r - r.mean() for r in ranks)
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-30))


@torch.no_grad()
def projection_agreement(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    projection_dim: int = 64,
    projection_seed: int = 0,
    repeats: int = 3,
) -> List[Dict[str, Any]]:
    """How close projected distances keep CSA's q and p to the exact ones, gate by gate.

    For each image (1, 3, H, W) and each CSA gate of ``model``: the gate's input is read by a
    hook, q and p are computed exactly (the gate's own options) and with ``distance="projected"``,
    and compared by Spearman's rank correlation over channels; the two descriptor computations are
    timed on that input (median of ``repeats``). One row per gate and image.
    """
    from .attention.csa import CSA, spatial_autocorrelation

    model.eval()
    gates = [(name, m) for name, m in model.named_modules() if isinstance(m, CSA)]
    captured: Dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_pre_hook(lambda _m, args, name=name: captured.__setitem__(name, args[0]))
        for name, m in gates
    ]
    rows = []
    try:
        for index, image in enumerate(images):
            model(image)
            for name, gate in gates:
                x = captured[name]
                options = dict(contiguity=gate.contiguity, eps=gate.eps)

                def exact():
                    return spatial_autocorrelation(x, **options)["q"]

                def projected():
                    return spatial_autocorrelation(
                        x,
                        distance="projected",
                        projection_dim=projection_dim,
                        projection_seed=projection_seed,
                        **options,
                    )["q"]

                q_exact, q_proj = exact(), projected()
                t_exact = statistics.median(_timed(exact, x.device) for _ in range(repeats))
                t_proj = statistics.median(_timed(projected, x.device) for _ in range(repeats))
                rows.append(
                    {
                        "image": index,
                        "gate": name,
                        "channels": x.shape[1],
                        "map": f"{x.shape[2]}x{x.shape[3]}",
                        "projected": x.shape[2] * x.shape[3] > projection_dim,
                        "rho_q": _spearman(q_exact[0], q_proj[0]),
                        "rho_p": _spearman(gate.excite(q_exact)[0], gate.excite(q_proj)[0]),
                        "exact_s": t_exact,
                        "projected_s": t_proj,
                    }
                )
    finally:
        for h in handles:
            h.remove()
    return rows


def to_markdown(rows: List[Dict[str, Any]], title: str) -> str:
    peak = any(r["peak_mb"] is not None for r in rows)
    head = (
        "| variant | params | GMAC | train step s | x none (range over rounds) | inference s | x none (range) | "
        "saved for backward MB | x none |"
    )
    head += " step peak MB | x none |" if peak else ""
    lines = [title, "", head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if peak else "")]
    for r in rows:
        line = (
            f"| {r['variant']} | {r['params']:,} | {r['gmac']:.3f} | {r['train_s']:.3f} | {ratio_text(r, 'train')} | "
            f"{r['infer_s']:.3f} | {ratio_text(r, 'infer')} | {r['saved_mb']:.0f} | {r['saved_ratio']:.2f} |"
        )
        lines.append(line + (f" {r['peak_mb']:.0f} | {r['peak_ratio']:.2f} |" if peak else ""))
    return "\n".join(lines)


@command
def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    parser = ToolParser(prog="python -m csa_lightning.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=50, choices=sorted(RESNET_LAYOUTS))
    list_option(parser, "--attentions", item_type=attention_name, default=PAPER_ATTENTIONS, metavar="A,B",
                help="the blocks to time, comma-separated (repeatable)")  # fmt: skip
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument(
        "--size", type=int_in(1, MAX_IMAGE_SIDE), default=224, help=f"image side, 1 to {MAX_IMAGE_SIDE} px"
    )
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed rounds (after one warm-up round)")
    parser.add_argument(
        "--max-repeats",
        type=positive_int,
        default=None,
        help="rounds at most while a ratio is unstable (default: 3 x --repeats, at least 5)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: time on the GPU (CUDA events; add --bf16 --channels-last for a GPU recipe)",
    )
    parser.add_argument("--bf16", action="store_true", help="forward under bf16 autocast")
    parser.add_argument("--channels-last", action="store_true", help="model and input in channels_last")
    list_option(parser, "--csa-modes", item_type=_contiguity, default=["l2"], metavar="M1,M2",
                help=f"contiguity modes to time CSA in ({','.join(CONTIGUITY_MODES)})")  # fmt: skip
    parser.add_argument("--csa-grad", action="store_true", help="also time CSA with contiguity_grad=True")
    parser.add_argument("--csa-projected", action="store_true", help='also time CSA with distance="projected" (k=64)')
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL|ATTENTION|JSON",
        help='another row, e.g. \'csa every block|csa|{"placement": "every_block"}\' (repeatable)',
    )
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown")
    parser.add_argument("--out", default=None, help="also write the JSON rows here")
    args = parser.parse_args(argv)
    attentions = args.attentions
    if args.out:
        require_writable_file("--out", args.out)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible here (run on a GPU machine, or use --device cpu)")
    modes = args.csa_modes
    try:
        extra = [parse_variant(text) for text in args.variant]
    except ValueError as err:
        parser.error(str(err))
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    if args.device == "cuda":
        machine += f", {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}"
    options = dict(csa_modes=modes, csa_grad=args.csa_grad, csa_projected=args.csa_projected)
    key = args.device + ("_bf16" if args.bf16 else "") + ("_channels_last" if args.channels_last else "")
    results = {
        key: benchmark(
            args.depth,
            attentions,
            args.batch,
            args.size,
            args.repeats,
            device=args.device,
            bf16=args.bf16,
            channels_last=args.channels_last,
            extra_variants=extra,
            max_repeats=args.max_repeats,
            **options,
        )
    }
    if args.format == "json":
        print(json.dumps({"machine": machine, **results}, indent=2))
    else:
        for key, rows in results.items():
            title = (
                f"ResNet-{args.depth}, batch {args.batch} at {args.size} px, {key}, "
                f"median of {rows[0]['rounds']} interleaved rounds; ratios: median of the rounds' paired ratios "
                f"(quartiles; lowest-highest under 4 rounds), 'unstable' where that range exceeds {STABLE_SPREAD:.0%} "
                f"of the median ({machine})"
            )
            print(to_markdown(rows, title) + "\n")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"machine": machine, **results}, fh, indent=2)
    return results[key]


def _contiguity(text: str) -> str:
    if text not in CONTIGUITY_MODES:
        raise ValueError(f"unknown contiguity mode {text!r}: choose from {', '.join(CONTIGUITY_MODES)}")
    return text


if __name__ == "__main__":
    main()
