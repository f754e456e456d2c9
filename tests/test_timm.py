"""Our gates in timm CNNs: as timm's own attention layer, and at every stage end of any feature_info model."""

import copy

import pytest
import torch

timm = pytest.importorskip("timm")

from csa_lightning.attention import CSA, resolve_attention  # noqa: E402
from csa_lightning.models import TimmSpec, add_stage_gates  # noqa: E402

# small members of each family (a forward and backward at 32 px in about a second each)
STAGE_END_FAMILIES = ["resnet18", "convnext_atto", "efficientnet_b0", "regnetx_002", "mobilenetv3_small_100"]


@pytest.mark.parametrize("name", ["se", "cbam", "eca", "gct", "csa"])
def test_every_block_takes_timms_factory_kwargs(name):
    cls = resolve_attention(name)
    gate = cls(32, device="meta", dtype=torch.float64, act_layer=torch.nn.SiLU)
    assert all(p.device.type == "meta" and p.dtype == torch.float64 for p in gate.parameters())
    with pytest.raises(TypeError, match="unexpected keyword argument 'chanels'"):
        cls(32, chanels=3)  # a misspelt option is still an error


@pytest.mark.parametrize(
    "model_name, kwargs",
    [
        ("resnet18", {"block_args": {"attn_layer": CSA}}),
        ("res2net50_26w_4s", {"block_args": {"attn_layer": CSA}}),
        ("efficientnet_b0", {"se_layer": CSA}),
    ],
)
def test_csa_is_timms_attn_layer_in_three_families(model_name, kwargs):
    model = timm.create_model(model_name, num_classes=10, **kwargs)
    gates = [m for m in model.modules() if isinstance(m, CSA)]
    assert len(gates) >= 8
    y = model(torch.randn(2, 3, 32, 32))
    y.sum().backward()
    assert y.shape == (2, 10) and all(g.mlp.fc1.weight.grad is not None for g in gates)


@pytest.mark.parametrize("model_name", STAGE_END_FAMILIES)
def test_stage_end_gates_in_any_feature_info_cnn(model_name, tmp_path):
    torch.manual_seed(0)
    plain = timm.create_model(model_name, num_classes=10)
    model = TimmSpec(model_name, "csa", num_classes=10).build()
    gate_params = sum(p.numel() for p in model.attention_gates.parameters())
    assert gate_params > 0
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters()) + gate_params
    # a saved random timm state dict loads with only the gates' keys missing (no key renamed)
    torch.save(plain.state_dict(), tmp_path / "timm.pt")
    result = model.load_state_dict(torch.load(tmp_path / "timm.pt", weights_only=True), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(k.startswith("attention_gates.") for k in result.missing_keys)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    y = model(x)
    y.sum().backward()
    assert y.shape == (2, 10) and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.attention_gates.parameters())
    # the gate multiplies the stage's output: with p fixed at 0.5, the gated output is half the raw one
    first = next(f["module"] for f in model.feature_info if f["module"].replace(".", "_") in model.attention_gates)
    stage = model.get_submodule(first)
    seen = {}
    stage.register_forward_pre_hook(lambda m, args: seen.__setitem__("input", args[0]))
    stage.register_forward_hook(lambda m, i, o: seen.__setitem__("gated", o))  # runs after the gate's hook
    model.attention_gates[first.replace(".", "_")].excite = lambda q: torch.full_like(q, 0.5)
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
        raw = stage.forward(seen["input"])  # .forward: the stage without its hooks
    torch.testing.assert_close(seen["gated"], 0.5 * raw)


def test_a_deep_copy_applies_its_own_gates():
    """EMA and AveragedModel deep-copy the model: the copy's hooks must use the copy's gates."""
    model = TimmSpec("resnet18", "se", num_classes=10).build().eval()
    twin = copy.deepcopy(model)
    for p in twin.attention_gates.parameters():
        torch.nn.init.zeros_(p)  # the copy's gates now give p = 0.5 everywhere
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(model(x), twin(x))
        assert twin.layer1.__dict__["_stage_gate"] is twin.attention_gates["layer1"]


def test_block_placement_and_bad_names():
    model = TimmSpec("resnet18", "eca", placement="blocks", num_classes=10).build()
    assert not hasattr(model, "attention_gates")
    assert sum(type(m).__name__ == "EfficientChannelAttention" for m in model.modules()) == 8
    with pytest.raises(ValueError, match="has no attention slot this project knows; use placement stage_end"):
        TimmSpec("convnext_atto", "csa", placement="blocks").build()
    with pytest.raises(ValueError, match="unknown timm model 'convnext_tinny'; did you mean 'convnext_tiny'"):
        TimmSpec("convnext_tinny", "csa").build()
    with pytest.raises(ValueError, match="unknown attention"):
        TimmSpec("resnet18", "csb")
    # a list of module names gates exactly those
    listed = TimmSpec("convnext_atto", "se", placement=["stages.2", "stages.3"], num_classes=10).build()
    assert list(listed.attention_gates) == ["stages_2", "stages_3"]
    assert not hasattr(TimmSpec("resnet18", None).build(), "attention_gates")  # no gate: timm's model


def test_stage_gates_on_a_module_outside_feature_info():
    model = timm.create_model("resnet18", num_classes=10)
    add_stage_gates(model, "se", stages=["layer3.0"])
    assert model.attention_gates["layer3_0"].channels == 256
    model(torch.randn(2, 3, 32, 32))


@pytest.mark.slow
def test_cli_trains_a_timm_convnext_with_csa(in_tmp_cwd):
    """A timm ConvNeXt with CSA gates trained through cli.py for one short epoch, then reloaded from
    its checkpoint; per-stage gate statistics logged under the timm stage names."""
    from csa_lightning.cli import main

    from .conftest import DEMO_CONFIG

    net = '{"class_path": "csa_lightning.models.TimmSpec", "init_args": {"model_name": "convnext_atto", "attention": "csa", "num_classes": 10}}'
    cli = main(["fit", "--config", str(DEMO_CONFIG), "--model.net", net,
                "--data", "csa_lightning.data.DigitsMemoryDataModule", "--data.resolution", "32",
                "--data.batch_size", "32", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
                "--trainer.limit_val_batches", "1"])  # fmt: skip
    module = cli.model
    assert type(module.model).__name__ == "ConvNeXt" and len(module.model.attention_gates) == 4
    assert module.hparams["net"]["class_path"] == "csa_lightning.models.TimmSpec"
    ckpt = next((in_tmp_cwd / "runs").rglob("last.ckpt"))
    reloaded = type(module).load_from_checkpoint(ckpt, weights_only=True)
    assert list(reloaded.model.attention_gates) == list(module.model.attention_gates)
    assert "gates/stages_0/p_mean" in (ckpt.parents[1] / "metrics.csv").read_text().splitlines()[0]


def test_the_ablation_runner_builds_timm_variants(tmp_path):
    """The runner's variants of the timm demo config swap the gate of the timm network (none: no gates)."""
    import torch

    from csa_lightning.ablate.plan import _option_keys, check_variants, plan_variants
    from csa_lightning.cli import main

    from .conftest import CONFIGS

    config = str(CONFIGS / "demo" / "digits_timm_convnext_csa.yaml")
    variants = plan_variants(["none", "se", "csa"], [0], {})
    assert check_variants(config, variants, []).errors == []  # what the runner does before the first run
    for variant in variants:
        args = ["--config", config, *variant.cli_args(_option_keys(variant.attention)),
                "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
        with torch.device("meta"):
            net = main(args, run=False).model.model
        assert type(net).__name__ == "ConvNeXt"
        gates = [type(g).__name__ for g in getattr(net, "attention_gates", {}).values()]
        expected = {"none": [], "se": ["SqueezeExcitation"] * 4, "csa": ["CSA"] * 4}[variant.attention]
        assert gates == expected
