"""The gate values of a forward pass, as a public API: [`record_gates`][csa_lightning.attention.record_gates].

Every [`ChannelAttention`][csa_lightning.attention.ChannelAttention] passes its gate p through a hook point,
``gate_output`` (CSA also its descriptor q, through ``descriptor_output``). ``record_gates(model)``
hooks those points of every block in ``model`` for the duration of a ``with`` block and collects
what each forward pass produced, keyed by the block's qualified name. The values are the tensors
the blocks used: differentiable in training (an auxiliary loss on them back-propagates), unless
``detach=True``. Outside the ``with`` block no hook is left: the model runs exactly as without it.

    with record_gates(model) as gates:
        logits = model(images)
    penalty = sum(p.abs().mean() for p in gates.values("p"))     # an L1 penalty on every gate

The hooks belong to the model's blocks: recording from two threads over one model at once mixes
their values (each thread gets its own record over its own model, or records in turn).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Dict, Iterator, List

from torch import Tensor, nn

from .base import ChannelAttention

__all__ = ["GateRecord", "record_gates"]

#: what each hook point records: kind -> the attribute of a block that holds the hook point
HOOK_POINTS = {"p": "gate_output", "q": "descriptor_output"}


class GateRecord:
    """What [`record_gates`][csa_lightning.attention.record_gates] collected: for each kind ("p", and "q" for CSA), a
    dict from a block's qualified name (``"layer3.5.attention"``) to the list of (N, C) tensors of its forward calls, in
    call order (one per forward pass of the model)."""

    def __init__(self) -> None:
        self.kinds: Dict[str, Dict[str, List[Tensor]]] = {kind: defaultdict(list) for kind in HOOK_POINTS}

    @property
    def p(self) -> Dict[str, List[Tensor]]:
        return self.kinds["p"]

    @property
    def q(self) -> Dict[str, List[Tensor]]:
        return self.kinds["q"]

    def values(self, kind: str = "p") -> List[Tensor]:
        """Every recorded (N, C) tensor of ``kind``, blocks in model order, calls in call order."""
        if kind not in self.kinds:
            raise ValueError(f"unknown gate value kind '{kind}': choose one of {', '.join(self.kinds)}")
        return [t for tensors in self.kinds[kind].values() for t in tensors]

    def clear(self) -> None:
        for recorded in self.kinds.values():
            recorded.clear()


@contextlib.contextmanager
def record_gates(model: nn.Module, detach: bool = False) -> Iterator[GateRecord]:
    """Collect every block's gate p (and CSA's q) of the forward passes run inside the ``with``
    block; see the module docstring. ``detach=True`` keeps no autograd graph (statistics)."""
    record = GateRecord()
    handles = []

    def hook(kind: str, name: str):
        def observe(module, inputs, output: Tensor) -> None:
            value = output.flatten(1)
            record.kinds[kind][name].append(value.detach() if detach else value)

        return observe

    try:
        for name, module in model.named_modules():
            if isinstance(module, ChannelAttention):
                for kind, attribute in HOOK_POINTS.items():
                    point = getattr(module, attribute, None)
                    if point is not None:
                        handles.append(point.register_forward_hook(hook(kind, name)))
        yield record
    finally:
        for handle in handles:
            handle.remove()
