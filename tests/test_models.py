"""Attention ResNets: parameter counts, placements, torchvision compatibility, weight loading."""

import itertools

import pytest
import torch
import torchvision
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

from csa_lightning.attention import CSA, ChannelAttention, SqueezeExcitation, available_attentions
from csa_lightning.models import (
    AttentionResNet,
    attention_resnet,
    load_backbone_weights,
    resolve_placement,
)

ATTENTIONS = available_attentions()
DEPTHS = [18, 34, 50, 101, 152]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def meta_model(*args, **kwargs):
    # parameter counts and structure need no memory or initialisation
    with torch.device("meta"):
        return attention_resnet(*args, **kwargs)


@pytest.mark.parametrize(
    "depth,attention,expected",
    [
        (50, None, 25_557_032),
        (50, "se", 28_088_024),
        (50, "csa", 26_257_432),
        (50, "gct", 25_557_032),  # GCT-B0 is parameter-free
        (101, None, 44_549_160),
        (101, "csa", 45_249_560),
    ],
)
def test_parameter_counts(depth, attention, expected):
    assert n_params(meta_model(depth, attention)) == expected


def test_plain_model_is_torchvision_resnet50_exactly():
    ours, theirs = meta_model(50), torchvision.models.resnet50(weights=None)
    assert n_params(ours) == n_params(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert isinstance(ours, torchvision.models.ResNet)


@pytest.mark.parametrize("depth", DEPTHS)
def test_gate_positions_and_channels(depth):
    model = meta_model(depth, "csa")
    blocks = [len(getattr(model, f"layer{s}")) for s in range(1, 5)]
    assert model.gate_positions == [(s, n - 1) for s, n in enumerate(blocks)]
    expansion = 4 if depth >= 50 else 1
    channels = [g.channels for _, g in model.gates()]
    assert channels == [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
    every = meta_model(depth, "se")
    assert len(list(every.gates())) == sum(blocks)


def test_placement_lists_with_negative_indices():
    model = meta_model(50, "csa", placement=[[0, -1], [3, -1], [2, 0]])
    assert model.gate_positions == [(0, 2), (2, 0), (3, 2)]
    assert [name for name, _ in model.gates()] == ["layer1.2.attention", "layer3.0.attention", "layer4.2.attention"]
    assert resolve_placement("every_block", [1, 2, 1, 1]) == [(0, 0), (1, 0), (1, 1), (2, 0), (3, 0)]


@pytest.mark.parametrize(
    "placement,message",
    [
        ("everywhere", "unknown placement 'everywhere'"),
        ([[4, 0]], "stage 4 out of range"),
        ([[0, 3]], "block 3 out of range for stage 0"),
        ([[0, -4]], "block -4 out of range"),
        ([[0]], "pairs of integers"),
    ],
)
def test_bad_placements_are_explained(placement, message):
    with pytest.raises(ValueError, match=message):
        meta_model(50, "csa", placement=placement)


def test_bad_depth_and_options_are_explained():
    with pytest.raises(ValueError, match="unsupported ResNet depth 51"):
        attention_resnet(51)
    with pytest.raises(ValueError, match="without an attention"):
        attention_resnet(18, None, attention_options={"reduction": 4})
    with pytest.raises(ValueError, match="unknown attention 'csaa'"):
        attention_resnet(18, "csaa")


def test_attention_options_reach_every_gate():
    model = meta_model(50, "csa", attention_options={"contiguity": "hybrid", "reduction": 8})
    gates = [g for _, g in model.gates()]
    assert all(g.contiguity == "hybrid" and g.mlp.fc1.out_features == g.channels // 8 for g in gates)


def test_gate_sits_after_last_bn_before_the_residual_add():
    """Replacing the gate by x -> 0 must leave only the identity path: out = relu(identity)."""
    torch.manual_seed(0)
    model = attention_resnet(50, "se", placement=[[0, 1]]).eval()
    block = model.layer1[1]

    class ZeroGate(ChannelAttention):
        def gate(self, x):
            return torch.zeros_like(x[:, :, :1, :1])

    seen = {}
    block.bn3.register_forward_hook(lambda m, i, o: seen.setdefault("bn3", o))
    block.attention = ZeroGate(256)
    block.attention.register_forward_pre_hook(lambda m, args: seen.setdefault("gate_in", args[0]))
    x = torch.randn(2, 256, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))
    assert torch.equal(seen["bn3"], seen["gate_in"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "depth", [18, 34, 50, 101]
)  # 152 is 101's Bottleneck code with more blocks (built on meta above)
def test_forward_backward_every_depth_attention_placement(depth):
    torch.manual_seed(depth)
    x = torch.randn(2, 3, 32, 32)
    target = torch.tensor([1, 4])
    # every block at both named placements (the default placement is one of them: checked on the
    # meta device in test_gate_positions_and_channels, so not built again here)
    for attention, placement in itertools.product(ATTENTIONS, [None, "stage_end", "every_block"]):
        if (attention == "none") != (placement is None):
            continue
        model = attention_resnet(depth, attention, placement=placement, num_classes=5)
        out = model(x)
        assert out.shape == (2, 5)
        torch.nn.functional.cross_entropy(out, target).backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), (depth, attention, placement)
        for _, gate in model.gates():  # the gates learn too
            assert all(p.grad is not None for p in gate.parameters())


@pytest.mark.parametrize("attention", ["se", "csa", "eca"])
def test_torchvision_state_dict_loads_with_only_gate_keys_missing(attention):
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None)
    model = attention_resnet(50, attention)
    result = model.load_state_dict(reference.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(".attention." in k for k in result.missing_keys)
    own = model.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(own[key], value), key
    # and back: the gate-free part of our state dict is torchvision's, key for key
    plain = {k: v for k, v in own.items() if ".attention." not in k}
    torchvision.models.resnet50(weights=None).load_state_dict(plain, strict=True)


def test_plain_attention_resnet_matches_torchvision_outputs():
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    model = attention_resnet(18).eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), reference(x))


@pytest.mark.parametrize("attention", ["csa", "se"])
def test_torchvision_fpn_extractor_accepts_the_model(attention):
    model = attention_resnet(50, attention, norm_layer=torchvision.ops.misc.FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(model, trainable_layers=3)
    features = backbone(torch.randn(1, 3, 96, 96))
    assert list(features) == ["0", "1", "2", "3", "pool"]
    assert all(f.shape[1] == 256 for f in features.values())
    trainable = {n.split(".")[0] for n, p in backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    # the gates travel with their stages
    assert any(isinstance(m, CSA if attention == "csa" else SqueezeExcitation) for m in backbone.body.modules())


def test_fasterrcnn_runs_on_an_attention_backbone():
    from torchvision.models.detection import FasterRCNN

    backbone = _resnet_fpn_extractor(attention_resnet(18, "csa"), trainable_layers=3)
    detector = FasterRCNN(
        backbone,
        num_classes=3,
        min_size=96,
        max_size=96,
        rpn_batch_size_per_image=32,
        box_batch_size_per_image=32,
        rpn_pre_nms_top_n_train=100,
        rpn_post_nms_top_n_train=50,
    )
    images = [torch.rand(3, 96, 96)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])}]
    losses = detector(images, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())


# ---------------------------------------------------------------------------- load_backbone_weights


def test_load_torchvision_state_dict_reports_new_gate_keys(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "resnet50.pth"
    reference = torchvision.models.resnet50(weights=None)
    torch.save(reference.state_dict(), path)
    model = attention_resnet(50, "csa")
    report = load_backbone_weights(model, str(path))
    assert report.missing and all(".attention." in k for k in report.missing)
    assert report.ignored == [] and report.source_prefix == ""
    assert len(report.loaded) == len(reference.state_dict())
    assert torch.equal(model.layer3[2].conv2.weight, reference.layer3[2].conv2.weight)
    assert "loaded 320 tensors" in report.summary()


def test_load_lightning_style_checkpoint_strips_prefix(tmp_path):
    torch.manual_seed(1)
    source = attention_resnet(18, "csa", num_classes=10)
    checkpoint = {
        "epoch": 3,
        "state_dict": {**{f"model.{k}": v for k, v in source.state_dict().items()}, "criterion.weight": torch.ones(10)},
    }
    path = tmp_path / "classifier.ckpt"
    torch.save(checkpoint, path)
    target = attention_resnet(18, "csa", num_classes=7)
    report = load_backbone_weights(target, str(path), exclude=("fc.",))
    assert report.source_prefix == "model."
    assert report.missing == ["fc.bias", "fc.weight"]
    assert set(report.ignored) == {"fc.weight", "fc.bias"}
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(target.state_dict()[key], value), key


def test_load_refuses_shape_mismatches_with_a_clear_error(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="shape mismatch loading .*r18.pth: .*check depth and attention"):
        load_backbone_weights(attention_resnet(50), str(path))
    with pytest.raises(ValueError, match="outside its gates unloaded"):  # skipping them leaves a partial load
        load_backbone_weights(attention_resnet(50), str(path), strict_shapes=False)
    report = load_backbone_weights(attention_resnet(50), str(path), strict_shapes=False, allow_partial=True)
    assert report.loaded and report.ignored


def test_load_reports_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="backbone weights not found: .*nope.pth"):
        load_backbone_weights(attention_resnet(18), str(tmp_path / "nope.pth"))
    corrupt = tmp_path / "corrupt.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cannot read backbone weights .*corrupt.pth") as err:
        load_backbone_weights(attention_resnet(18), str(corrupt))
    assert "\n" not in str(err.value)
    not_resnet = tmp_path / "mlp.pth"
    torch.save(torch.nn.Linear(3, 4).state_dict(), not_resnet)
    with pytest.raises(ValueError, match="no ResNet stem"):
        load_backbone_weights(attention_resnet(18), str(not_resnet))


def test_load_refuses_pickled_objects(tmp_path):
    """weights_only=True: a checkpoint that pickles arbitrary objects is not executed."""
    path = tmp_path / "model_object.pth"
    torch.save(torchvision.models.resnet18(weights=None), path)  # a whole module, not a state dict
    with pytest.raises(ValueError, match="cannot read backbone weights"):
        load_backbone_weights(attention_resnet(18), str(path))


def test_attention_resnet_is_a_subclassable_module():
    class Wider(AttentionResNet):
        def __init__(self, **kwargs):
            super().__init__(depth=18, attention="eca", **kwargs)

    model = Wider(num_classes=3, width_per_group=64)
    assert model.fc.out_features == 3 and len(list(model.gates())) == 8
