"""Parameter and multiply-add counts of attention ResNets, beside the CSA paper's Table 1.

    python -m csa_lightning.models.summary [--depths 50,101] [--attentions none,se,csa] [--size 224]

GMAC = multiply-adds of one image: torch.utils.flop_counter counts the convolutions and linear
layers (2 FLOPs per multiply-add, so halved), and each gate adds what it reports through
``ChannelAttention.extra_macs`` (CSA: C * C * H * W for its Gram matrix, by formula, so the figure
does not depend on how the Gram is computed). The paper's GFLOPs column is shown as printed,
beside ours, but it is not comparable: its rows are not consistent with each other (3.86 for
ResNet-50, whose usual count is 4.1 GMAC, yet 4.13 for ECA-R50, whose gates add almost nothing)
and its CSA rows leave out the distance matrix (about 0.82 GMAC per image at 224 px for R50).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..attention import PAPER_ATTENTIONS, PLACEMENTS, ChannelAttention, attention_name
from ..checks import MAX_IMAGE_SIDE
from ..errors import ToolParser, UsageError, command, int_in, list_option
from .attention_resnet import RESNET_LAYOUTS, attention_resnet

__all__ = ["ModelCost", "count_cost", "summary_table", "PAPER_TABLE1", "display_name"]

#: the layers whose multiply-adds torch's flop counter measures; everything else is by formula
COUNTED_MODULES = (torch.nn.modules.conv._ConvNd, torch.nn.Linear)

#: (depth, attention) -> (GFLOPs, params in M, top-1 err %, top-5 err %) from the paper's Table 1
PAPER_TABLE1: Dict[Tuple[int, str], Tuple[float, float, float, float]] = {
    (50, "none"): (3.86, 25.6, 24.70, 7.80),
    (50, "se"): (3.87, 28.1, 23.14, 6.70),
    (50, "cbam"): (3.87, 28.1, 22.80, 6.52),
    (50, "eca"): (4.13, 25.5, 22.55, 6.32),
    (50, "gct"): (4.12, 25.6, 22.45, 6.29),
    (50, "csa"): (4.12, 26.2, 21.41, 5.72),
    (101, "none"): (7.58, 44.5, 23.30, 6.88),
    (101, "se"): (7.60, 49.3, 22.35, 6.19),
    (101, "eca"): (7.86, 44.5, 21.35, 5.66),
    (101, "gct"): (7.86, 44.5, 21.15, 5.59),
    (101, "csa"): (7.84, 45.2, 20.97, 5.30),
}

_DISPLAY = {"none": "ResNet", "se": "SE", "cbam": "CBAM*", "eca": "ECA", "gct": "GCT", "csa": "CSA"}


def display_name(depth: int, attention: str) -> str:
    """ "ResNet-50", "CSA-R50", "CBAM*-R101" (CBAM* = CBAM's channel gate alone)..."""
    if attention == "none":
        return f"ResNet-{depth}"
    return f"{_DISPLAY.get(attention, attention)}-R{depth}"


@dataclass
class ModelCost:
    depth: int
    attention: str
    placement: str
    gates: int
    params: int
    gmac: float
    paper_gflops: Optional[float]
    paper_params_m: Optional[float]
    paper_top1_err: Optional[float]
    label: Optional[str] = None  # a named variant's own label (--variant)

    @property
    def name(self) -> str:
        base = display_name(self.depth, self.attention)
        return f"{base} ({self.label})" if self.label else base


def count_cost(model: torch.nn.Module, size: int = 224) -> Tuple[int, float]:
    """(parameters, GMAC per image at ``size`` x ``size``) of ``model``."""
    params = sum(p.numel() for p in model.parameters())
    gate_inputs: List[Tuple[ChannelAttention, torch.Size]] = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: gate_inputs.append((mod, args[0].shape)))
        for m in model.modules()
        if isinstance(m, ChannelAttention)
    ]
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(1, 3, size, size, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    # only what runs inside nn.Conv*d and nn.Linear modules counts; any other matmul (CSA's Gram,
    # however it is written) is left to the gates' extra_macs formula
    per_module = counter.get_flop_counts()
    root = type(model).__name__
    flops = sum(
        sum(per_module.get(f"{root}.{name}", {}).values())
        for name, module in model.named_modules()
        if isinstance(module, COUNTED_MODULES)
    )
    macs = flops / 2 + sum(gate.extra_macs(shape) for gate, shape in gate_inputs)
    return params, macs / 1e9


def parse_variant(text: str) -> Tuple[str, str, Dict]:
    """ "LABEL|ATTENTION|JSON" -> (label, attention, options): a named model variant for the summary
    and the benchmark; options hold the gate's options and optionally "placement", e.g.
    'authors|csa|{"placement": "every_block", "contiguity": "hybrid", "distance": "pooled"}'."""
    parts = text.split("|", 2)
    if len(parts) < 2 or not parts[0].strip() or not parts[1].strip():
        raise UsageError(f"variant {text!r}: expected LABEL|ATTENTION or LABEL|ATTENTION|JSON-OPTIONS")
    try:
        options = json.loads(parts[2]) if len(parts) == 3 and parts[2].strip() else {}
    except json.JSONDecodeError as err:
        raise UsageError(f"variant {text!r}: options are not JSON ({err.msg})") from None
    if not isinstance(options, dict):
        raise UsageError(f"variant {text!r}: options must be a JSON object")
    from ..attention import attention_name

    try:
        attention = attention_name(parts[1])
    except (ValueError, TypeError) as err:
        raise UsageError(f"variant {text!r}: {err}") from None
    gate_options = [k for k in options if k not in ("placement", "timm")]
    takes = gate_option_names(attention)
    for key in gate_options:
        if takes is not None and key not in takes:
            close = difflib.get_close_matches(key, takes, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UsageError(
                f"variant {text!r}: {attention} takes no option '{key}'{hint}; it takes "
                f"{', '.join([*takes, 'placement', 'timm'])}"
            )
    return parts[0].strip(), attention, options


def gate_option_names(attention: str) -> Optional[List[str]]:
    """The constructor options of a block (None when it takes any keyword: nothing to check)."""
    import inspect

    from ..attention import resolve_attention

    cls = resolve_attention(attention)
    if cls is None:
        return []
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return [p for p in parameters if p not in ("self", "channels")]


def build_variant(depth: int, attention: str, options: Dict) -> torch.nn.Module:
    """The network of a variant: options' "placement" goes to the model, "timm" names a timm model
    to build instead of the attention ResNet of ``depth`` ([`TimmSpec`][csa_lightning.models.TimmSpec],
    e.g. '{"timm": "resnet50"}'), the rest goes to the gates."""
    gate_options = {k: v for k, v in options.items() if k not in ("placement", "timm")}
    if options.get("timm"):
        from .timm_net import TimmSpec

        placement = options.get("placement") or "stage_end"
        return TimmSpec(options["timm"], attention, placement, gate_options or None).build()
    return attention_resnet(
        depth, attention, placement=options.get("placement"), attention_options=gate_options or None
    )


def summary_table(
    depths: Iterable[int] = (18, 34, 50, 101, 152),
    attentions: Iterable[str] = PAPER_ATTENTIONS,
    size: int = 224,
    placement=None,
    variants: Sequence[Tuple[str, str, Dict]] = (),
) -> List[ModelCost]:
    """One row per depth and attention (at ``placement``), then one per depth and named variant."""
    rows = []
    for depth in depths:
        specs = [(None, a, {"placement": placement} if placement else {}) for a in attentions] + list(variants)
        for label, attention, options in specs:
            # meta tensors: shapes and op counts without allocating or computing anything
            with torch.device("meta"):
                model = build_variant(depth, attention, options)
            params, gmac = count_cost(model, size)
            paper = PAPER_TABLE1.get((depth, attention)) if size == 224 and label is None else None
            chosen = options.get("placement")
            rows.append(
                ModelCost(
                    depth=depth,
                    attention=attention,
                    placement="-" if attention == "none" else str(chosen or _default_placement(attention)),
                    gates=sum(isinstance(m, ChannelAttention) for m in model.modules()),
                    params=params,
                    gmac=round(gmac, 3),
                    paper_gflops=paper[0] if paper else None,
                    paper_params_m=paper[1] if paper else None,
                    paper_top1_err=paper[2] if paper else None,
                    label=label,
                )
            )
    return rows


def _default_placement(attention: str) -> str:
    from ..attention import resolve_attention

    cls = resolve_attention(attention)
    return cls.default_placement if cls is not None else "stage_end"  # no gates: any placement places none


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def to_markdown(rows: Sequence[ModelCost], size: int = 224) -> str:
    lines = [
        f"| model | placement | gates | params | GMAC @{size} | paper params | paper GFLOPs | paper top-1 err % |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.placement} | {r.gates} | {r.params:,} | {r.gmac:.3f} | "
            f"{_fmt(r.paper_params_m, '.1f')}{'M' if r.paper_params_m else ''} | {_fmt(r.paper_gflops, '.2f')} | "
            f"{_fmt(r.paper_top1_err, '.2f')} |"
        )
    return "\n".join(lines)


def _depth(text: str) -> int:
    if not text.isdigit() or int(text) not in RESNET_LAYOUTS:
        raise ValueError(f"unsupported depth {text!r}: choose from {', '.join(map(str, sorted(RESNET_LAYOUTS)))}")
    return int(text)


@command
def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = ToolParser(description=__doc__.split("\n\n")[0], prog="python -m csa_lightning.models.summary")
    list_option(parser, "--depths", item_type=_depth, default=sorted(RESNET_LAYOUTS), metavar="D1,D2",
                help="ResNet depths, comma-separated (repeatable)")  # fmt: skip
    list_option(parser, "--attentions", item_type=attention_name, default=PAPER_ATTENTIONS, metavar="A,B",
                help="attention names, comma-separated (repeatable)")  # fmt: skip
    parser.add_argument("--placement", default=None, choices=PLACEMENTS, help="default: each block's own")
    parser.add_argument("--size", type=int_in(1, MAX_IMAGE_SIDE), default=224, help="input side in pixels")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL|ATTENTION|JSON",
        help='another row per depth, e.g. \'authors|csa|{"placement": "every_block", "distance": "pooled"}\'',
    )
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown")
    args = parser.parse_args(argv)
    try:
        variants = [parse_variant(v) for v in args.variant]
    except ValueError as err:
        parser.error(str(err))
    depths, attentions = args.depths, args.attentions
    rows = summary_table(depths, attentions, args.size, args.placement, variants)
    if args.format == "json":
        print(json.dumps([asdict(r) | {"name": r.name} for r in rows], indent=2))
    else:
        print(to_markdown(rows, args.size))
        print(
            "\nGMAC: multiply-adds per image (torch.utils.flop_counter on convolutions and linear layers, halved, "
            "plus C*C*H*W per CSA gate for its Gram matrix). Paper figures: CSA-Net Table 1 "
            "(its GFLOPs omit CSA's distance matrix). CBAM* = CBAM's channel gate only."
        )


if __name__ == "__main__":
    main()
