"""The attention registry: names, dotted paths, classes, "none", user blocks and errors."""

import textwrap

import pytest
import torch

from csa_lightning.attention import (
    CSA,
    ChannelAttention,
    SqueezeExcitation,
    available_attentions,
    build_attention,
    register_attention,
    resolve_attention,
)
from csa_lightning.models import attention_resnet


def test_available_attentions_lists_every_block_and_none_first():
    names = available_attentions()
    assert names[0] == "none"
    assert set(names) >= {"none", "se", "cbam", "eca", "gct", "csa"}


@pytest.mark.parametrize("spec", [None, "none", "None", ""])
def test_none_builds_no_gate(spec):
    assert build_attention(spec, 64) is None
    assert resolve_attention(spec) is None


def test_name_class_and_dotted_path_build_the_same_block():
    by_name = build_attention("csa", 64, contiguity="hybrid")
    by_class = build_attention(CSA, 64, contiguity="hybrid")
    by_path = build_attention("csa_lightning.attention.csa.CSA", 64, contiguity="hybrid")
    for block in (by_name, by_class, by_path):
        assert type(block) is CSA and block.channels == 64 and block.contiguity == "hybrid"


def test_default_placements():
    assert CSA.default_placement == "stage_end"
    for name in ("se", "cbam", "eca", "gct"):
        assert resolve_attention(name).default_placement == "every_block"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        build_attention("sqeeze", 64)
    message = str(err.value)
    assert "unknown attention 'sqeeze'" in message
    for name in available_attentions():
        assert name in message
    assert "\n" not in message


def test_bad_dotted_paths_and_classes_are_explained():
    with pytest.raises(ValueError, match="cannot import attention 'no_such_pkg.Gate'"):
        build_attention("no_such_pkg.Gate", 8)
    with pytest.raises(ValueError, match="has no attribute 'Nope'"):
        build_attention("csa_lightning.attention.se.Nope", 8)
    with pytest.raises(TypeError, match="not a ChannelAttention subclass"):
        build_attention("torch.nn.ReLU", 8)
    with pytest.raises(TypeError, match="must subclass ChannelAttention"):
        build_attention(torch.nn.ReLU, 8)
    with pytest.raises(TypeError, match=r"cannot build attention SqueezeExcitation\(8"):
        build_attention("se", 8, no_such_option=1)
    with pytest.raises(ValueError, match="takes no options"):
        build_attention("none", 8, reduction=4)


def test_registering_a_taken_name_fails(clean_registry):
    with pytest.raises(ValueError, match="already registered"):

        @register_attention("se")
        class OtherSE(ChannelAttention):
            pass

    with pytest.raises(ValueError, match="reserved"):
        register_attention("none")


def test_user_registered_block_works_in_attention_resnet(clean_registry):
    @register_attention("halfgate")
    class HalfGate(ChannelAttention):
        """Multiplies every channel by a learnt constant (starts at 0.5)."""

        default_placement = "stage_end"

        def __init__(self, channels, start=0.5):
            super().__init__(channels)
            self.scale = torch.nn.Parameter(torch.full((channels,), start))

        def gate(self, x):
            return self.scale.expand(x.shape[0], -1)[:, :, None, None]

    assert "halfgate" in available_attentions()
    model = attention_resnet(18, "halfgate", attention_options={"start": 0.25}, num_classes=3)
    gates = dict(model.gates())
    assert list(gates) == ["layer1.1.attention", "layer2.1.attention", "layer3.1.attention", "layer4.1.attention"]
    assert all(isinstance(g, HalfGate) and float(g.scale[0].detach()) == 0.25 for g in gates.values())
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert gates["layer1.1.attention"].scale.grad is not None


def test_user_block_from_a_dotted_path_in_another_package(tmp_path, monkeypatch, clean_registry):
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "gates.py").write_text(
        textwrap.dedent(
            """
            import torch
            from csa_lightning.attention import ChannelAttention

            class MaxGate(ChannelAttention):
                default_placement = "every_block"

                def gate(self, x):
                    return torch.sigmoid(x.amax(dim=(2, 3), keepdim=True))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = attention_resnet(18, "userpkg.gates.MaxGate", num_classes=4)
    assert len(list(model.gates())) == 8  # every block of ResNet-18
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_forward_is_input_times_gate():
    torch.manual_seed(0)
    block = SqueezeExcitation(32)
    x = torch.randn(3, 32, 4, 4)
    gate = block.gate(x)
    assert gate.shape == (3, 32, 1, 1)
    torch.testing.assert_close(block(x), x * gate)


@pytest.mark.parametrize("name", [n for n in available_attentions() if n != "none"])
def test_forward_checks_the_input_shape_for_every_block(name):
    """The base class checks the shape once (forward and descriptors): no gate has to remember it."""
    import torch

    block = build_attention(name, 64)
    for bad in (torch.randn(1, 32, 4, 4), torch.randn(64, 4, 4)):
        with pytest.raises(ValueError, match=r"was built for 64 channels and expects \(N, 64, H, W\)"):
            block(bad)
        with pytest.raises(ValueError, match="expects"):
            block.descriptors(bad)


def test_one_registration_mechanism_exports_every_blocks_names():
    import csa_lightning.attention as attention

    for name in ("CSA", "SqueezeExcitation", "CBAMChannelGate", "EfficientChannelAttention", "GaussianContextTransformer",
                 "spatial_autocorrelation", "eca_kernel_size", "standardize", "register_attention"):  # fmt: skip
        assert name in attention.__all__ and hasattr(attention, name)
