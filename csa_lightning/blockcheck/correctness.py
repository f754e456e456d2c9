"""Correctness checks of a channel-attention block: each returns a one-line detail when it passes,
raises `csa_lightning.blockcheck.correctness.Fault` for a correctness fault (the kit fails) or
`csa_lightning.blockcheck.correctness.Finding` for a limit worth knowing (no float64 support, for instance).

Every check builds the block through `csa_lightning.blockcheck.correctness.BlockUnderTest` (the class resolved once, its
JSON options), so a user's block, a plugin and a built-in go through the same code. The GPU kit
(``benchmarks/gpu_check.py``) calls `csa_lightning.blockcheck.correctness.check_degenerate_inputs` and
`csa_lightning.blockcheck.correctness.check_autocast` on CUDA; the suite runs every check on the built-ins and on
deliberately faulty blocks.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import torch
from torch import Tensor

from ..attention import ChannelAttention, construct_attention
from ..errors import describe

__all__ = [
    "Fault",
    "Finding",
    "BlockUnderTest",
    "CORRECTNESS_CHECKS",
    "degenerate_inputs",
    "check_degenerate_inputs",
    "check_autocast",
]


class Fault(AssertionError):
    """A correctness fault: the block computes something wrong or breaks."""


class Finding(Exception):
    """Not a fault, a limit worth knowing (the kit's report lists it; the exit status stays 0)."""


@dataclass
class BlockUnderTest:
    """A resolved block class and the options it is built with."""

    label: str
    cls: Type[ChannelAttention]
    options: Dict[str, Any] = field(default_factory=dict)

    def build(self, channels: int, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu") -> ChannelAttention:
        """The block with non-trivial weights: every parameter drawn from N(0, 0.3^2) (random biases keep
        an MLP's hidden units active, and a zero-initialised parameter would hide its gradient)."""
        torch.manual_seed(seed)
        block = construct_attention(self.cls, channels, dict(self.options))
        with torch.no_grad():
            for p in block.parameters():
                p.copy_(torch.randn_like(p) * 0.3)
        return block.to(device=device, dtype=dtype)


def correlated_map(shape: Tuple[int, ...], seed: int, dtype=torch.float32) -> Tensor:
    """A feature map with channels correlated across space, as in a trained network."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape[0], 1, *shape[2:], generator=g, dtype=torch.float64)
    x = 0.6 * base + torch.randn(shape, generator=g, dtype=torch.float64)
    return (x + 0.3 * torch.randn(*shape[:2], 1, 1, generator=g, dtype=torch.float64)).to(dtype)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise Fault(message)


def _relative(a: Tensor, b: Tensor) -> float:
    scale = b.detach().double().abs().max().clamp_min(1e-30)
    return float((a.detach().double() - b.detach().double()).abs().max() / scale)


def _forward_backward(block: ChannelAttention, x: Tensor, upstream: Optional[Tensor] = None):
    x = x.detach().clone().requires_grad_(True)
    y = block(x)
    g = upstream if upstream is not None else torch.ones_like(y)
    (y.float() * g.float()).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in block.named_parameters() if p.grad is not None}
    block.zero_grad(set_to_none=True)
    assert x.grad is not None
    return y.detach(), x.grad.detach(), grads


# ------------------------------------------------------------------------------------- the checks


def check_shape_and_range(b: BlockUnderTest, quick: bool) -> str:
    c = 16
    block = b.build(c).eval()
    x = correlated_map((3, c, 6, 5), seed=1)
    with torch.no_grad():
        p = block.gate(x)
        y = block(x)
    _require(tuple(p.shape) == (3, c, 1, 1), f"gate(x) has shape {tuple(p.shape)}, expected (3, {c}, 1, 1)")
    _require(tuple(y.shape) == tuple(x.shape), f"forward(x) has shape {tuple(y.shape)}, expected {tuple(x.shape)}")
    _require(bool(torch.isfinite(p).all()), "gate(x) is not finite on an ordinary map")
    error = _relative(y, x * p)
    _require(error <= 1e-6, f"forward(x) differs from x * gate(x) by {error:.1e} of its largest value")
    return f"gate (N, C, 1, 1) in [{float(p.min()):.3g}, {float(p.max()):.3g}]; forward = x * gate"


def check_descriptors(b: BlockUnderTest, quick: bool) -> str:
    c = 16
    block = b.build(c).eval()
    x = correlated_map((3, c, 5, 5), seed=2)
    with torch.no_grad():
        d = block.descriptors(x)
        p = block.gate(x)
    _require(isinstance(d, dict) and "p" in d and "z" in d, f"descriptors(x) must hold 'z' and 'p', got {list(d)}")
    for name, value in d.items():
        _require(
            tuple(value.shape) == (3, c), f"descriptors(x)['{name}'] has shape {tuple(value.shape)}, expected (3, {c})"
        )
    error = _relative(d["p"], p.flatten(1))
    _require(error <= 1e-6, f"descriptors(x)['p'] differs from gate(x) by {error:.1e}")
    return f"descriptors {', '.join(d)} of shape (N, C); 'p' equals gate(x)"


def check_float64_gradients(b: BlockUnderTest, quick: bool) -> str:
    c = 8
    options = {**b.options, **getattr(b.cls, "exact_gradient_options", {})}
    exact = BlockUnderTest(b.label, b.cls, options)
    try:
        block = exact.build(c, dtype=torch.float64).eval()
        x = correlated_map((2, c, 4, 4), seed=3, dtype=torch.float64)
        y = block(x)
    except Exception as err:  # noqa: BLE001 - whatever stops a float64 forward is the finding
        raise Finding(f"does not run in float64 ({describe(err)})") from None
    with torch.no_grad():
        gate_dtype = block.gate(x).dtype
    _require(y.dtype == torch.float64 and gate_dtype == torch.float64,
             f"a float64 input gives a {gate_dtype} gate (a cast inside the block?): it cannot be checked in float64, "
             "and its gradients lose precision")  # fmt: skip
    names = [n for n, _ in block.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in block.named_parameters())

    def run(x, *values):
        return torch.func.functional_call(block, dict(zip(names, values)), (x,))

    try:
        ok = torch.autograd.gradcheck(run, (x.requires_grad_(True), *params), eps=1e-6, atol=1e-6, rtol=1e-4,
                                      raise_exception=False, fast_mode=quick)  # fmt: skip
    except Exception as err:  # noqa: BLE001
        raise Fault(f"float64 gradcheck could not run ({describe(err)})") from None
    _require(
        ok,
        "float64 gradcheck: the analytic gradient differs from the numerical one; likely causes: a cast to a fixed "
        "dtype inside the block (x.float() loses float64's precision), a non-differentiable step (argmax, rounding, "
        "a threshold, .detach() on the path), or a custom autograd Function whose backward is approximate (declare "
        "exact_gradient_options for the check)",
    )
    extra = f" (with {b.cls.exact_gradient_options})" if getattr(b.cls, "exact_gradient_options", None) else ""
    return f"float64 gradcheck of the input and {len(params)} parameters passes{extra}"


def degenerate_inputs(channels: int, device="cpu") -> Dict[str, Tensor]:
    """Maps that break divisions by standard deviations and distances, and extreme scales."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 1, 5, 5, generator=g)
    cases = {
        "all_zero": torch.zeros(2, channels, 5, 5),
        "identical_channels": base.expand(2, channels, 5, 5).contiguous(),
        "constant_maps": torch.randn(2, channels, 1, 1, generator=g).expand(2, channels, 5, 5).contiguous(),
        "batch_of_one": torch.randn(1, channels, 5, 5, generator=g),
        "tiny_values": torch.randn(2, channels, 5, 5, generator=g) * 1e-20,
        "huge_values": torch.randn(2, channels, 5, 5, generator=g) * 1e15,
    }
    return {k: v.to(device) for k, v in cases.items()}


def _finite_on(block: ChannelAttention, cases: Dict[str, Tensor], autocast_dtype: Optional[torch.dtype] = None) -> None:
    for case, x in cases.items():
        x = x.detach().clone().requires_grad_(True)
        if autocast_dtype is None:
            out = block(x)
        else:
            with torch.autocast(x.device.type, dtype=autocast_dtype):
                out = block(x.to(autocast_dtype))
        _require(bool(torch.isfinite(out.float()).all()), f"{case}: non-finite output")
        out.float().sum().backward()
        _require(
            x.grad is not None and bool(torch.isfinite(x.grad.float()).all()), f"{case}: non-finite input gradient"
        )
        bad = [n for n, p in block.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        _require(not bad, f"{case}: non-finite gradient of {bad[0]}" if bad else "")
        block.zero_grad(set_to_none=True)


def check_degenerate_inputs(b: BlockUnderTest, quick: bool, device="cpu") -> str:
    block = b.build(32, device=device).train()
    cases = degenerate_inputs(32, device)
    _finite_on(block, cases)
    return f"finite outputs and gradients on {len(cases)} degenerate inputs ({', '.join(cases)})"


def check_autocast(b: BlockUnderTest, quick: bool, device="cpu", dtypes=(torch.bfloat16, torch.float16)) -> str:
    block = b.build(32, device=device).train()
    done = []
    for dtype in dtypes:
        cases = degenerate_inputs(32, device)
        if dtype == torch.float16:
            del cases["huge_values"]  # past fp16's range (65504): an fp16 network never produces it
        _finite_on(block, cases, dtype)
        x = correlated_map((2, 32, 6, 6), seed=4).to(device)
        with torch.no_grad():
            reference = block(x)
            with torch.autocast(x.device.type, dtype=dtype):
                low = block(x.to(dtype))
        error = _relative(low.float(), reference)
        _require(
            error <= 0.05, f"{str(dtype)[6:]} autocast output differs from fp32 by {error:.1e} of its largest value"
        )
        done.append(f"{str(dtype)[6:]} {error:.1e}")
    return f"finite on degenerate inputs under autocast; difference to fp32: {', '.join(done)}"


def check_channels_last(b: BlockUnderTest, quick: bool) -> str:
    block = b.build(16).train()
    x = correlated_map((2, 16, 6, 6), seed=5)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
    y, gx, gp = _forward_backward(block, x, upstream)
    y2, gx2, gp2 = _forward_backward(block, x.contiguous(memory_format=torch.channels_last), upstream)
    errors = [_relative(y2, y), _relative(gx2, gx), *(_relative(gp2[n], gp[n]) for n in gp)]
    _require(max(errors) <= 1e-5, f"channels_last input differs from contiguous by {max(errors):.1e} (limit 1e-5)")
    return f"channels_last equals contiguous (largest difference {max(errors):.1e})"


def check_batch_of_one_training(b: BlockUnderTest, quick: bool) -> str:
    block = b.build(16).train()
    try:
        y, gx, _ = _forward_backward(block, correlated_map((1, 16, 5, 5), seed=7))
    except Exception as err:  # noqa: BLE001
        raise Fault(f"batch of 1 in training mode fails ({describe(err)})") from None
    _require(bool(torch.isfinite(y).all() and torch.isfinite(gx).all()), "batch of 1 in training mode: non-finite")
    return "batch of 1 in training mode: finite output and gradients"


def check_eval_determinism(b: BlockUnderTest, quick: bool) -> str:
    block = b.build(16).eval()
    x = correlated_map((2, 16, 5, 5), seed=8)
    with torch.no_grad():
        first, second = block(x), block(x)
    _require(torch.equal(first, second), "two eval-mode calls on the same input differ")
    return "eval mode: two calls bitwise equal"


def check_no_shared_state(b: BlockUnderTest, quick: bool) -> str:
    """Calls on other inputs in between, a deep copy, and two threads give the sequential results."""
    block = b.build(16).eval()
    x1, x2 = correlated_map((2, 16, 5, 5), seed=9), correlated_map((2, 16, 5, 5), seed=10) * 3
    with torch.no_grad():
        alone = block(x2)
        block(x1)
        after_other = block(x2)
    _require(torch.equal(alone, after_other), "the output for one input depends on the input of an earlier call")
    twin = copy.deepcopy(block)
    with torch.no_grad():
        expected = (block(x1), twin(x2))
    rounds = 20 if quick else 100
    results: List[Optional[Tuple[bool, str]]] = [None, None]

    def worker(index: int, module: ChannelAttention, x: Tensor, want: Tensor) -> None:
        try:
            with torch.no_grad():
                same = all(torch.equal(module(x), want) for _ in range(rounds))
            results[index] = (same, "")
        except Exception as err:  # noqa: BLE001
            results[index] = (False, f"{describe(err)}")

    threads = [threading.Thread(target=worker, args=(0, block, x1, expected[0])),
               threading.Thread(target=worker, args=(1, twin, x2, expected[1]))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for result in results:
        same, error = result if result is not None else (False, "(a thread did not finish)")
        _require(same, f"two threads (the block and its deep copy) disagree with sequential calls {error}".strip())
    return f"no state shared between calls, copies or threads (2 threads x {rounds} calls)"


def check_state_dict_round_trip(b: BlockUnderTest, quick: bool) -> str:
    source = b.build(16, seed=0).eval()
    target = b.build(16, seed=1).eval()
    target.load_state_dict(source.state_dict(), strict=True)
    x = correlated_map((2, 16, 5, 5), seed=11)
    with torch.no_grad():
        _require(torch.equal(source(x), target(x)), "a block loaded from another's state_dict computes otherwise")
    return f"state_dict round trip ({len(source.state_dict())} tensors) gives the same outputs"


def check_starts_at_identity(b: BlockUnderTest, quick: bool) -> str:
    """``start_at_identity()`` (what ``gates_at_identity`` calls when gates go into a trained network):
    the output equals the input exactly, and every parameter still learns within 3 SGD steps (64 channels:
    at 16 a reduction-16 MLP has one hidden unit, which a random draw can leave dead)."""
    c = 64
    block = b.build(c, seed=0).train().start_at_identity()
    x = correlated_map((3, c, 5, 5), seed=12)
    with torch.no_grad():
        y = block(x)
    _require(
        torch.equal(y, x),
        f"after start_at_identity() the output differs from the input by {_relative(y, x):.1e} of its largest value: "
        "a block that overrides forward must use the blended gate (ChannelAttention._blended)",
    )
    start = {n: p.detach().clone() for n, p in block.named_parameters()}
    optimizer = torch.optim.SGD(block.parameters(), lr=0.1)
    target = correlated_map((3, c, 5, 5), seed=13)
    for _ in range(3):
        optimizer.zero_grad()
        ((block(x) - target) ** 2).mean().backward()
        optimizer.step()
    frozen = [n for n, p in block.named_parameters() if torch.equal(p.detach(), start[n])]
    _require(not frozen, f"after start_at_identity() these parameters did not change in 3 SGD steps: {frozen}")
    return f"output = input exactly; all {len(start)} parameter tensors change within 3 SGD steps"


def check_in_a_resnet(b: BlockUnderTest, quick: bool) -> str:
    from ..models import attention_resnet

    done = []
    for placement in ("stage_end", "every_block"):
        torch.manual_seed(0)
        model = attention_resnet(18, b.cls, placement=placement, attention_options=b.options or None,
                                 num_classes=10, zero_init_residual=True).train()  # fmt: skip
        x = torch.randn(2, 3, 32, 32)
        out = model(x)
        _require(tuple(out.shape) == (2, 10), f"ResNet-18 ({placement}) gives logits of shape {tuple(out.shape)}")
        out.logsumexp(1).sum().backward()
        _require(bool(torch.isfinite(out).all()), f"ResNet-18 ({placement}): non-finite logits")
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        _require(not bad, f"ResNet-18 ({placement}), zero-initialised last BN: non-finite gradient of {bad[:1]}")
        done.append(f"{placement} ({len(list(model.gates()))} gates)")
        if placement == "every_block":
            for dtype in (torch.bfloat16, torch.float16):
                model.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=dtype):
                    out = model(x)
                out.float().logsumexp(1).sum().backward()
                finite = torch.isfinite(out.float()).all() and all(
                    torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None
                )
                _require(bool(finite), f"ResNet-18 ({placement}) under {str(dtype)[6:]} autocast: non-finite")
            done.append("bf16 and fp16 autocast")
    return f"ResNet-18 with zero-initialised last BN trains finite: {', '.join(done)}"


#: (name, check) in report order
CORRECTNESS_CHECKS: List[Tuple[str, Callable[[BlockUnderTest, bool], str]]] = [
    ("shape and range", check_shape_and_range),
    ("descriptors", check_descriptors),
    ("float64 gradcheck", check_float64_gradients),
    ("degenerate inputs", check_degenerate_inputs),
    ("bf16 / fp16 autocast", check_autocast),
    ("channels_last", check_channels_last),
    ("batch of 1, training", check_batch_of_one_training),
    ("eval determinism", check_eval_determinism),
    ("calls, copies, threads", check_no_shared_state),
    ("state_dict round trip", check_state_dict_round_trip),
    ("starts at identity", check_starts_at_identity),
    ("in a ResNet", check_in_a_resnet),
]
