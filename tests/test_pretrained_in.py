"""Pretrained networks in: gates inserted at identity (the network's output unchanged before the first
step, the gates still learning), weights by torchvision's and timm's names, and staged fine-tuning
(gates and head first, then everything at a lower lr for the pretrained part) that resumes exactly."""

import json

import pytest
import torch

from .conftest import DEMO_CONFIG

BLOCKS = ["se", "cbam", "eca", "gct", "csa"]


def _plain_and_gated(attention, placement, depth=18):
    from csa_lightning.models import AttentionResNet

    torch.manual_seed(0)
    plain = AttentionResNet(depth, None, num_classes=10)
    gated = AttentionResNet(depth, attention, placement, num_classes=10, gates_at_identity=True)
    missing, unexpected = gated.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(".attention." in k for k in missing)
    return plain, gated


@pytest.mark.parametrize("placement", ["stage_end", "every_block"])
@pytest.mark.parametrize("attention", BLOCKS)
def test_gates_inserted_at_identity_leave_the_network_unchanged(attention, placement):
    """Before: SE, ECA, CBAM and CSA start at p ~ 0.5 (GCT ~ 0.89): every gated stage was scaled down."""
    plain, gated = _plain_and_gated(attention, placement)
    x = torch.randn(4, 3, 32, 32)
    for mode in ("train", "eval"):  # batch statistics and running statistics
        plain.train(mode == "train")
        gated.train(mode == "train")
        with torch.no_grad():
            assert torch.equal(gated(x), plain(x)), (attention, placement, mode)
    without = _plain_and_gated(attention, placement)[1]
    without_identity = type(without)(18, attention, placement, num_classes=10)
    without_identity.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        assert not torch.allclose(without_identity.eval()(x), plain.eval()(x))  # the default start does change it


@pytest.mark.parametrize("attention", BLOCKS)
def test_every_gate_learns_within_a_few_steps(attention):
    plain, gated = _plain_and_gated(attention, "stage_end")
    start = {k: v.clone() for k, v in gated.named_parameters() if ".attention." in k}
    optimizer = torch.optim.SGD(gated.parameters(), lr=0.1, momentum=0.9)  # no weight decay: only gradients move them
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(gated(x), y).backward()
        optimizer.step()
    frozen = [k for k, v in gated.named_parameters() if k in start and torch.equal(v, start[k])]
    assert not frozen, f"{attention}: unchanged after 3 steps: {frozen}"


def test_a_plugin_block_starts_at_identity_through_the_block_interface(clean_registry):
    from csa_lightning.attention import ChannelAttention, register_attention
    from csa_lightning.blockcheck import blocks_under_test, check_block

    @register_attention("halfgate")
    class HalfGate(ChannelAttention):
        def __init__(self, channels):
            super().__init__(channels)
            self.scale = torch.nn.Parameter(torch.zeros(channels))

        def gate(self, x):
            return torch.sigmoid(self.scale.view(1, -1, 1, 1) + 0 * x.mean((2, 3), keepdim=True))

    plain, gated = _plain_and_gated("halfgate", "stage_end")
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(gated.eval()(x), plain.eval()(x))
    (block,) = blocks_under_test(["halfgate"])
    (result,) = [r for r in check_block(block, sections=("correctness",)).results if r.check == "starts at identity"]
    assert result.status == "pass", result


def test_timm_networks_take_gates_at_identity_and_timm_weights_by_file(tmp_path):
    import timm

    from csa_lightning.models import TimmSpec

    torch.manual_seed(0)
    plain = timm.create_model("resnet18", num_classes=10)
    torch.save(plain.state_dict(), tmp_path / "resnet18.pth")
    x = torch.randn(2, 3, 32, 32)
    for placement in ("stage_end", "blocks"):
        spec = TimmSpec("resnet18", "csa", placement, num_classes=10, gates_at_identity=True,
                        pretrained_file=str(tmp_path / "resnet18.pth"))  # fmt: skip
        gated = spec.build().eval()
        with torch.no_grad():
            assert torch.equal(gated(x), plain.eval()(x)), placement


def _torchvision_file(monkeypatch, tmp_path, weights):
    """A state dict placed where torchvision's cache looks for ``weights`` (as a connected machine
    would have downloaded it)."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    depth = int(type(weights).__name__.removeprefix("ResNet").split("_")[0])
    torch.manual_seed(1)
    state = getattr(torchvision.models, f"resnet{depth}")().state_dict()
    path = tmp_path / "torch_home" / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state, path


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_a_torchvision_state_dict_loads_into_every_depth(depth, tmp_path):
    import torchvision

    from csa_lightning.models import AttentionResNet, load_backbone_weights

    state = getattr(torchvision.models, f"resnet{depth}")().state_dict()
    torch.save(state, tmp_path / "tv.pth")
    model = AttentionResNet(depth, "csa", num_classes=10, gates_at_identity=True)
    report = load_backbone_weights(model, str(tmp_path / "tv.pth"), exclude=("fc.",))
    assert set(report.loaded) == {k for k in state if not k.startswith("fc.")}
    assert all(".attention." in k or k.startswith("fc.") for k in report.missing)


def test_weights_by_torchvision_name_come_from_its_cache_and_enter_the_provenance(tmp_path, monkeypatch):
    from torchvision.models import ResNet18_Weights, ResNet50_Weights

    from csa_lightning.models import AttentionResNet, load_backbone_weights, resolve_weights

    state, path = _torchvision_file(monkeypatch, tmp_path, ResNet18_Weights.IMAGENET1K_V1)
    assert resolve_weights("IMAGENET1K_V1", depth=18) == path
    assert resolve_weights("DEFAULT", depth=18) == path
    assert resolve_weights("ResNet18_Weights.IMAGENET1K_V1", depth=18) == path
    model = AttentionResNet(18, "se", num_classes=10, gates_at_identity=True)
    report = load_backbone_weights(model, "IMAGENET1K_V1", exclude=("fc.",))
    assert torch.equal(model.conv1.weight, state["conv1.weight"]) and len(report.loaded) == len(state) - 2
    _, path50 = _torchvision_file(monkeypatch, tmp_path, ResNet50_Weights.IMAGENET1K_V2)
    assert resolve_weights("IMAGENET1K_V2", depth=50) == path50
    with pytest.raises(ValueError, match=r"ResNet18_Weights has no IMAGENET1K_V2 \(it has IMAGENET1K_V1, DEFAULT\)"):
        resolve_weights("IMAGENET1K_V2", depth=18)


def test_bad_weights_are_one_line_each(tmp_path):
    from csa_lightning.models import AttentionResNet, load_backbone_weights

    r18 = AttentionResNet(18, "csa", num_classes=10)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    torch.save(AttentionResNet(18, None, num_classes=10).state_dict(), tmp_path / "r18.pth")
    four_channels = AttentionResNet(18, None, num_classes=10).state_dict()
    four_channels["conv1.weight"] = torch.zeros(64, 4, 7, 7)  # a stem for 4-channel images: outside the head
    torch.save(four_channels, tmp_path / "rgbd.pth")
    cases = [
        (r18, "junk.pth", "cannot read backbone weights"),
        (r18, "none.pth", "backbone weights not found"),
        (
            r18,
            "IMAGENET1K_V9",
            "unknown weights 'IMAGENET1K_V9': not a file, and ResNet18_Weights has no IMAGENET1K_V9",
        ),
        (AttentionResNet(34, "csa", num_classes=10), "r18.pth", "leaves 80 of the model's tensors outside its gates"),
        (r18, "rgbd.pth", "shape mismatch loading"),
    ]
    for model, name, message in cases:
        path = name if name.isupper() else str(tmp_path / name)
        with pytest.raises((ValueError, FileNotFoundError)) as err:
            load_backbone_weights(model, path, exclude=("fc.",))
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


MEMORY_DIGITS = ["--data", "csa_lightning.data.DigitsMemoryDataModule", "--data.resolution", "16",
                 "--data.batch_size", "32", "--data.limit_train_samples", "128"]  # fmt: skip


def _fit(tmp_path, name, *extra, epochs=3, data=MEMORY_DIGITS):
    from csa_lightning.cli import main

    root = tmp_path / name
    args = ["fit", "--config", str(DEMO_CONFIG), *data,
            "--model.net.init_args.depth", "18", "--trainer.limit_val_batches", "1",
            "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(root), "--seed_everything", "0", *extra]  # fmt: skip
    return main(args)


def _finetune_args(plain_ckpt):
    """The config piece (configs/recipe/finetune.yaml: gates at identity, 0.1 x the lr), its warm-up at 1.5 epochs."""
    return ["--config", str(DEMO_CONFIG.parents[1] / "recipe" / "finetune.yaml"), "--model.backbone_weights",
            str(plain_ckpt), "--model.net.init_args.attention", "csa", "--model.finetune.warmup_epochs", "1.5"]  # fmt: skip


@pytest.fixture(scope="module")
def plain_checkpoint(tmp_path_factory):
    """A plain ResNet-18 trained one epoch on the digits (no gates): the pretrained network of these tests."""
    root = tmp_path_factory.mktemp("pretrained")
    _fit(root, "plain", "--model.net.init_args.attention", "none", epochs=1)
    (ckpt,) = (root / "plain").glob("**/last.ckpt")
    return ckpt


def test_staged_finetuning_trains_gates_and_head_first_then_everything(tmp_path, plain_checkpoint):
    """Gates and head alone for 1.5 epochs (the pretrained weights exactly as loaded after the first
    epoch), then everything with the pretrained groups at 0.1 x the lr; every group exists from step 0."""
    cli = _fit(tmp_path, "warmup", *_finetune_args(plain_checkpoint), epochs=1)
    plain = torch.load(plain_checkpoint, weights_only=True)["state_dict"]
    tuned = cli.model.state_dict()
    pretrained = [f"model.{k}" for k in cli.model.pretrained_parameters]  # all but the gates and the head
    assert len(pretrained) == 60 and all(torch.equal(tuned[k], plain[k]) for k in pretrained)  # lr 0 in the warm-up
    blends = [k for k in tuned if k.endswith("attention.identity_blend")]
    assert blends and all(float(tuned[k].abs().min()) > 0 for k in blends)  # the gates left identity
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    groups = cli.trainer.optimizers[0].param_groups
    flags = [g["pretrained"] for g in groups]
    assert True in flags and False in flags
    warm, total = int(1.5 * 4), 3 * 4
    for step in range(total):
        lrs = [base * f(step) for base, f in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        new = [lr for lr, p in zip(lrs, flags) if not p]
        old = [lr for lr, p in zip(lrs, flags) if p]
        if step < warm:
            assert set(old) == {0.0} and min(new) > 0, step
        else:
            assert old == pytest.approx([0.1 * lr for lr in new][: len(old)]), step


@pytest.mark.system  # four short trainings
@pytest.mark.parametrize("stop", [1, 2], ids=["in-the-warm-up", "after-the-unfreeze"])
def test_staged_finetuning_resumes_to_the_same_weights(tmp_path, plain_checkpoint, stop):
    """Stopped after epoch 1 (in the 1.5-epoch warm-up) or 2 (after the unfreeze), then resumed:
    the same lr factors and the same weights as without the stop."""
    args = _finetune_args(plain_checkpoint)
    straight = _fit(tmp_path, "straight", *args)
    _fit(tmp_path, "stopped", *args, "--trainer.callbacks+=tests.stop_early.StopAfterEpochs",
         "--trainer.callbacks.init_args.epochs", str(stop))  # fmt: skip
    (last,) = (tmp_path / "stopped").glob("**/last.ckpt")
    assert torch.load(last, weights_only=True)["epoch"] == stop - 1  # stopped where the test says
    resumed = _fit(tmp_path, "stopped", *args, "--ckpt_path", str(last))
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [g["lr"] for g in straight.trainer.optimizers[0].param_groups] == [
        g["lr"] for g in resumed.trainer.optimizers[0].param_groups
    ]


def test_finetuning_without_pretrained_weights_is_one_line(tmp_path, monkeypatch, capsys):
    from csa_lightning.cli import main

    from .conftest import refusal

    monkeypatch.chdir(tmp_path)
    line = refusal(capsys, main, ["fit", "--config", str(DEMO_CONFIG), "--model.finetune.warmup_epochs", "1",
                                  "--trainer.fast_dev_run", "true"])  # fmt: skip
    assert "model.finetune needs model.backbone_weights" in line


def test_the_ablation_report_names_the_weights_every_variant_started_from(tmp_path):
    from csa_lightning.ablate.report import started_from, write_report

    from .test_ablate import _record

    def starting(record, weights, digest=None):
        model = {"class_path": "csa_lightning.tasks.ClassificationModule",
                 "init_args": {"backbone_weights": weights, "net": {"init_args": {"gates_at_identity": True}}}}  # fmt: skip
        code = {"named_files": {"model.backbone_weights": {"path": weights, "sha256": digest}}} if digest else {}
        return {**record, "config": {"model": model}, "code": code}

    records = [starting(_record("none", "none", 0, 0.90), "runs/plain/last.ckpt", "ab" * 32),
               starting(_record("se", "se", 0, 0.91), "IMAGENET1K_V1")]  # fmt: skip
    assert started_from(records[0]) == "`runs/plain/last.ckpt` (sha256 abababababab), gates at identity"
    assert started_from({"config": {}}) == "a random initialisation"
    write_report(tmp_path, records, "weights")
    report = (tmp_path / "report.md").read_text()
    assert "| se | `IMAGENET1K_V1`, gates at identity |" in report
    write_report(tmp_path, [_record("none", "none", 0, 0.9), _record("se", "se", 0, 0.9)], "scratch")
    assert "Every variant started from a random initialisation." in (tmp_path / "report.md").read_text()


@pytest.mark.system  # a short fine-tune through the ImageFolder loader
def test_your_own_image_folder_fine_tunes_from_pretrained_weights_in_one_command(tmp_path, plain_checkpoint):
    """Three classes of one's own (a new head of 3) from a 10-class plain network, gates at identity,
    staged fine-tuning: one cli.py fit command."""
    import shutil

    from csa_lightning.data.digits import write_digits_image_folder

    from .conftest import ROOT

    write_digits_image_folder(str(tmp_path / "digits"), 16)
    for split in ("train", "val"):
        for label in ("0", "1", "2"):
            shutil.copytree(tmp_path / "digits" / split / label, tmp_path / "mine" / split / label)
    cli = _fit(tmp_path, "mine", "--config", str(ROOT / "configs" / "recipe" / "finetune.yaml"),
               "--model.backbone_weights", str(plain_checkpoint), "--model.net.init_args.attention", "se",
               "--model.net.init_args.num_classes", "3", epochs=2,
               data=["--data", "csa_lightning.data.ImageFolderDataModule", "--data.train_path",
                     str(tmp_path / "mine" / "train"), "--data.val_path", str(tmp_path / "mine" / "val"),
                     "--data.resolution", "16", "--data.num_workers", "0", "--data.flip", "false"])  # fmt: skip
    assert cli.model.model.fc.out_features == 3 and len(cli.model.pretrained_parameters) == 60
    assert float(cli.trainer.callback_metrics["val/top1"]) > 1 / 3  # better than chance after two short epochs


def test_a_detection_checkpoint_gives_its_backbone_and_says_so(tmp_path):
    """A detector's checkpoint (Faster R-CNN on an attention ResNet) holds a ResNet under
    model.backbone.body.: it loads as the classifier's backbone, and the report names where it was."""
    from csa_lightning.models import AttentionResNet, RCNNSpec, load_backbone_weights

    detector = RCNNSpec(depth=18, attention="csa", num_classes=11).build()
    torch.save({"state_dict": {f"model.{k}": v for k, v in detector.state_dict().items()}}, tmp_path / "det.ckpt")
    model = AttentionResNet(18, "csa", num_classes=10)
    report = load_backbone_weights(model, str(tmp_path / "det.ckpt"), exclude=("fc.",))
    assert (
        report.source_prefix == "model.backbone.body."
        and "(the ResNet under 'model.backbone.body.'" in report.summary()
    )
    assert torch.equal(model.layer4[1].conv2.weight, detector.backbone.body.layer4[1].conv2.weight)


@pytest.mark.parametrize("attention", ["se", "csa"])
def test_a_trained_classifier_with_gates_inserted_at_identity_gives_the_same_logits(plain_checkpoint, attention):
    """Through the task module, as cli.py builds it: the same classes keep the file's head, so the gated
    network's logits equal the plain checkpoint's before the first step (a new class count: a new head)."""
    from csa_lightning.models import ResNetSpec
    from csa_lightning.tasks import ClassificationModule

    plain = ClassificationModule.load_from_checkpoint(plain_checkpoint, map_location="cpu").eval()
    spec = ResNetSpec(18, attention, num_classes=10, gates_at_identity=True)
    gated = ClassificationModule(spec, backbone_weights=str(plain_checkpoint)).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(gated(x), plain(x))
    new_head = ClassificationModule(ResNetSpec(18, attention, num_classes=3, gates_at_identity=True),
                                    backbone_weights=str(plain_checkpoint))  # fmt: skip
    assert new_head.model.fc.out_features == 3 and "model.fc.weight" not in new_head.pretrained_parameters


def test_weights_by_name_enter_the_runs_provenance_by_content(tmp_path, monkeypatch):
    """run_info.json names the weights as given (IMAGENET1K_V1) and the cached file it read, by sha256."""
    import hashlib

    from torchvision.models import ResNet18_Weights

    _, path = _torchvision_file(monkeypatch, tmp_path, ResNet18_Weights.IMAGENET1K_V1)
    _fit(tmp_path, "named", "--model.backbone_weights", "IMAGENET1K_V1", "--model.net.init_args.attention", "se",
         "--model.net.init_args.gates_at_identity", "true", epochs=1)  # fmt: skip
    (info_path,) = (tmp_path / "named").glob("**/run_info.json")
    entry = json.loads(info_path.read_text())["code"]["named_files"]["model.backbone_weights"]
    assert entry["model.backbone_weights"] == "IMAGENET1K_V1" and entry["path"] == str(path)
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()[: len(entry["sha256"])]
