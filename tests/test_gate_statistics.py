"""GateStatistics: per-stage p (and CSA's q) statistics from forward hooks, only on the steps it logs."""

from types import SimpleNamespace

import pytest
import torch

from csa_lightning.attention import ChannelAttention
from csa_lightning.models import attention_resnet
from csa_lightning.tasks.gate_statistics import GateStatistics, gate_stage


class _Logger:
    def __init__(self):
        self.logged = []

    def log_metrics(self, metrics, step):
        self.logged.append((step, metrics))


def _trainer(step, logger):
    return SimpleNamespace(global_step=step, is_global_zero=True, loggers=[logger])


def test_statistics_are_those_of_the_gates_the_forward_used():
    torch.manual_seed(0)
    model = attention_resnet(18, "csa", num_classes=10).train()
    inputs = {}
    for name, gate in model.named_modules():
        if isinstance(gate, ChannelAttention):
            gate.register_forward_pre_hook(lambda m, args, name=name: inputs.__setitem__(name, args[0].detach()))
    x = torch.randn(4, 3, 32, 32)
    calls = {"n": 0}
    from csa_lightning.attention.csa import CSA

    original = CSA._descriptor_math

    def counting(self, x):
        calls["n"] += 1
        return original(self, x)

    logger = _Logger()
    callback = GateStatistics(every_n_steps=5)
    CSA._descriptor_math = counting
    try:
        callback.on_train_batch_start(_trainer(10, logger), model, None, 0)
        model(x)
        callback.on_train_batch_end(_trainer(11, logger), model, None, None, 0)
    finally:
        CSA._descriptor_math = original
    assert calls["n"] == 4  # one per gate: the statistics recomputed nothing
    ((step, metrics),) = logger.logged
    assert step == 10
    for name, x_in in inputs.items():
        stage = gate_stage(name)
        gate = model.get_submodule(name)
        with torch.no_grad():
            d = gate.descriptors(x_in)
        for key in ("p", "q"):
            values = d[key].flatten()
            assert metrics[f"gates/{stage}/{key}_mean"] == pytest.approx(float(values.mean()), rel=1e-5, abs=1e-6)
            assert metrics[f"gates/{stage}/{key}_std"] == pytest.approx(float(values.std()), rel=1e-4, abs=1e-6)
            low, high = torch.quantile(values, torch.tensor([0.05, 0.95]))
            assert metrics[f"gates/{stage}/{key}_p05"] == pytest.approx(float(low), rel=1e-5, abs=1e-6)
            assert metrics[f"gates/{stage}/{key}_p95"] == pytest.approx(float(high), rel=1e-5, abs=1e-6)
    assert sorted({k.split("/")[1] for k in metrics}) == ["layer1", "layer2", "layer3", "layer4"]
    # no hook left behind: the next (unlogged) steps run exactly as without the callback
    assert all(
        not m._forward_hooks for n, m in model.named_modules() if n.endswith(("gate_output", "descriptor_output"))
    )


def test_only_every_n_steps_and_once_per_step():
    model = attention_resnet(18, "se", num_classes=10)
    logger = _Logger()
    callback = GateStatistics(every_n_steps=3)
    for step in (0, 0, 1, 2, 3):  # step 0 twice: two micro-batches of one accumulated step
        callback.on_train_batch_start(_trainer(step, logger), model, None, 0)
        model(torch.randn(2, 3, 32, 32))
        callback.on_train_batch_end(_trainer(step + 1, logger), model, None, None, 0)
    assert [s for s, _ in logger.logged] == [0, 3]
    assert "gates/layer4/p_mean" in logger.logged[0][1] and not any("/q_" in k for k in logger.logged[0][1])


def test_gate_stage_names():
    assert gate_stage("model.layer3.5.attention") == "layer3"
    assert gate_stage("layer1.0.attention") == "layer1"
    assert gate_stage("model._orig_mod.stages.2.blocks.1.attn") == "stages.2"


def test_every_n_steps_must_be_positive():
    with pytest.raises(ValueError, match="GateStatistics.every_n_steps must be a positive integer, got 0"):
        GateStatistics(every_n_steps=0)
