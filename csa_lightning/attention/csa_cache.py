"""CSA's two process-wide stores, both kept only in plain eager calls (never under torch.compile,
torch.export or FakeTensor tracing): the random projections of ``distance="projected"`` (a small LRU
behind a lock, shared by the threads) and a per-thread workspace for the CPU distance blocks (never
shared between threads or models)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import List

import torch
from torch import Tensor

__all__ = ["PROJECTION_CACHE_SIZE", "clear_projection_cache", "release_workspace"]

#: How many random projections (one per map size, device and dtype) are kept; COCO's padded
#: input sizes vary batch to batch, about 17 MB per layer1 size at k = 64.
PROJECTION_CACHE_SIZE = 8

_PROJECTIONS: "OrderedDict[tuple, Tensor]" = OrderedDict()

_PROJECTIONS_LOCK = threading.Lock()


def is_plain_eager(t: Tensor) -> bool:
    """True for an ordinary tensor in an eager call: not under torch.compile or torch.export, and
    not a FakeTensor or another tracing subclass. Only then may a call keep state between calls
    (a workspace, a cached projection): a traced call would leave a fake tensor behind for later
    eager calls, or bake the cached tensor into the program as a constant."""
    return type(t) is torch.Tensor and not torch.compiler.is_compiling() and not torch.compiler.is_exporting()


def projection(size: int, k: int, seed: int, like: Tensor) -> Tensor:
    def draw() -> Tensor:
        # drawn by numpy from its own seeded generator: the same matrix on every device and process,
        # and a constant (not a random op with a generator) in a torch.export / ONNX graph
        import numpy as np

        values = np.random.Generator(np.random.PCG64(seed * 1_000_003 + size)).standard_normal((size, k))
        return (torch.from_numpy(values) / k**0.5).to(like.device, like.dtype)

    if not is_plain_eager(like):
        return draw()
    key = (size, k, seed, str(like.device), like.dtype)
    with _PROJECTIONS_LOCK:
        if key in _PROJECTIONS:
            _PROJECTIONS.move_to_end(key)
            return _PROJECTIONS[key]
    matrix = draw()
    with _PROJECTIONS_LOCK:
        _PROJECTIONS[key] = matrix
        while len(_PROJECTIONS) > PROJECTION_CACHE_SIZE:
            _PROJECTIONS.popitem(last=False)  # least recently used
    return matrix


def clear_projection_cache() -> None:
    """Forget the cached random projections (they are redrawn, identically, on the next call)."""
    with _PROJECTIONS_LOCK:
        _PROJECTIONS.clear()


def projection_cache_tensors() -> List[Tensor]:
    with _PROJECTIONS_LOCK:
        return list(_PROJECTIONS.values())


_THREAD_STATE = threading.local()


def workspace(numel: int, like: Tensor) -> Tensor:
    """Memory for the distance blocks, reused across eager calls of one thread on the CPU.

    The blocks of one call are alive together (the mean distance needs all of them before the
    exponentials); freshly allocated, tens of MB per call at ResNet-50's layer4 go back to the OS
    and fault in again page by page on the next call, which measured about a third of the gate's
    time there. Each thread keeps its own buffer (the largest size it has needed, per dtype), freed
    with the thread, so concurrent calls from several threads or models never share one: about
    N * C^2 * 5/8 * 4 bytes for the largest gate seen, 84 MB per thread for ResNet-50's layer4 at
    batch 8 (C = 2048, float32). Under torch.compile, torch.export or FakeTensor tracing a fresh
    tensor is used and nothing is kept. On GPUs the caching allocator already does this.
    [`release_workspace`][csa_lightning.attention.release_workspace] frees the calling thread's buffer.
    """
    if like.device.type != "cpu" or not is_plain_eager(like):
        return torch.empty(numel, device=like.device, dtype=like.dtype)
    spaces = getattr(_THREAD_STATE, "spaces", None)
    if spaces is None:
        spaces = _THREAD_STATE.spaces = {}
    space = spaces.get(like.dtype)
    if space is None or space.numel() < numel:
        # a normal tensor even when first needed under torch.inference_mode (Lightning's validation):
        # an inference tensor cannot be written in place by a later training step
        with torch.inference_mode(False):
            space = spaces[like.dtype] = torch.empty(numel, dtype=like.dtype)
    return space


def release_workspace() -> None:
    """Free the CPU memory the calling thread keeps between calls for CSA's distance blocks."""
    _THREAD_STATE.spaces = {}
