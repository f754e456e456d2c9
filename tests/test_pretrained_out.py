"""A trained network leaves by the names people load models with: timm's registry, torch.hub's
hubconf.py, and a model folder (safetensors, config, model card) that all three loaders read."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import make_classification_checkpoint, refusal

ROOT = Path(__file__).resolve().parents[1]


def test_timm_and_torch_hub_build_every_depth_and_block_with_the_same_weights_names():
    import timm

    import csa_lightning  # noqa: F401 - registers the names with timm
    from csa_lightning.models import AttentionResNet
    from csa_lightning.models.names import model_names

    names = model_names()
    assert {"csa_resnet50", "se_resnet18", "eca_resnet152", "gct_resnet34", "cbam_resnet101"} <= set(names)
    with torch.device("meta"):  # shapes and names only: no initialisation cost
        for name, (attention, depth) in names.items():
            from_timm = timm.create_model(name, num_classes=7)
            from_hub = torch.hub.load(str(ROOT), name, source="local", num_classes=7)
            assert isinstance(from_timm, AttentionResNet) and isinstance(from_hub, AttentionResNet)
            assert {k: v.shape for k, v in from_timm.state_dict().items()} == {
                k: v.shape for k, v in from_hub.state_dict().items()
            }, name
            assert from_timm.build_args == from_hub.build_args and from_hub.build_args["attention"] == attention
            assert from_hub.depth == depth and len(list(from_hub.gates())) > 0


@pytest.mark.system  # two fresh interpreters importing torch and timm (10 s)
def test_timm_names_register_in_either_import_order_and_never_shadow_timms_own():
    code = (
        "import {first}, {second}, timm\n"
        "print(timm.create_model('csa_resnet18', num_classes=3).fc.out_features,"
        " timm.models.model_entrypoint('nf_resnet50').__module__)"
    )
    for first, second in (("csa_lightning", "timm"), ("timm", "csa_lightning")):
        done = subprocess.run([sys.executable, "-c", code.format(first=first, second=second)], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split() == ["3", "timm.models.nfnet"]


def test_a_plugin_block_gets_timm_names(clean_registry):
    import timm

    from csa_lightning.attention import ChannelAttention, register_attention
    from csa_lightning.models.names import register_timm_names

    @register_attention("meanpool_gate")
    class MeanPoolGate(ChannelAttention):
        def gate(self, x):
            return torch.sigmoid(x.mean((2, 3), keepdim=True))

    @register_attention("nf")  # timm has nf_resnet50: that one stays timm's
    class Nf(MeanPoolGate):
        pass

    registered = register_timm_names(["meanpool_gate", "nf"])
    assert "meanpool_gate_resnet50" in registered and "nf_resnet50" not in registered
    assert timm.models.model_entrypoint("nf_resnet50").__module__ == "timm.models.nfnet"
    model = timm.create_model("meanpool_gate_resnet18", num_classes=2)
    assert isinstance(model.layer4[-1].attention, MeanPoolGate)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A digits CSA ResNet-18 checkpoint and its model folder, written by the command."""
    from csa_lightning.publish import main

    root = tmp_path_factory.mktemp("publish")
    ckpt = make_classification_checkpoint(root / "csa.ckpt", "csa")
    main(["--ckpt", ckpt, "--out", str(root / "folder")])
    return ckpt, root / "folder"


def test_the_model_folder_round_trip_is_bit_equal_by_every_loader(published):
    import timm

    from csa_lightning.export import load_classifier
    from csa_lightning.models.model_folder import load_model_folder

    ckpt, folder = published
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    trained, _ = load_classifier(ckpt)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = trained(x)
        for model in (
            load_model_folder(folder),
            timm.create_model(f"local-dir:{folder}", pretrained=True).eval(),
            torch.hub.load(str(ROOT), "csa_resnet18", source="local", weights=str(folder)).eval(),
        ):
            assert torch.equal(model(x), expected)
    # timm's pretrained-file route with a new head: every tensor but the head's comes from the file
    new_head = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=4)
    assert new_head.fc.out_features == 4 and torch.equal(
        new_head.layer4[1].conv2.weight, trained.layer4[1].conv2.weight
    )


def test_the_model_card_says_data_recipe_accuracy_provenance_and_licence(published):
    from huggingface_hub import ModelCard

    ckpt, folder = published
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "mit" and card.data.library_name == "timm"
    text = card.text
    assert "| limit_train_samples | 128 |" in text and "| resolution | 32 |" in text
    assert "torch.optim.SGD" in text and "StepDecay" in text and "after 4 optimiser steps" in text
    saved = torch.load(ckpt, weights_only=True)
    # the digits checkpoint of the fixture validated nothing: the card says so instead of a number
    assert "no record: the run validated nothing" in text
    assert saved["run_info"]["git_commit"] in text if saved.get("run_info") else "csa-lightning commit" in text
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "csa_resnet18" and config["num_classes"] == 10


def test_the_card_takes_the_accuracy_from_the_runs_own_record(tmp_path):
    """An ablation run folder's result.json is the record the report reads: the card quotes it."""
    from csa_lightning.publish import run_record
    from csa_lightning.run_folder import RunFolder

    run = RunFolder(tmp_path / "runs" / "csa_seed0")
    (run.path / "checkpoints").mkdir(parents=True)
    run.result.write_text(
        json.dumps({"monitor": "val/top1", "best": 0.97, "final": {"val/top1": 0.96, "val/loss": 0.1}})
    )
    metrics, source = run_record(str(run.path / "checkpoints" / "best.ckpt"), {})
    assert metrics == {"val/top1": 0.96, "val/loss": 0.1, "best val/top1": 0.97} and str(run.result) in source


def test_a_folder_with_a_missing_or_mismatched_file_is_one_line(published, tmp_path, capsys):
    import shutil

    from csa_lightning.models import AttentionResNet
    from csa_lightning.models.model_folder import load_model_folder, save_model_folder
    from csa_lightning.publish import main

    _, folder = published
    no_weights = tmp_path / "no_weights"
    shutil.copytree(folder, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model folder .*no_weights has no model.safetensors; write it with"):
        load_model_folder(no_weights)
    other = save_model_folder(AttentionResNet(18, "se", num_classes=10), tmp_path / "se")
    mismatched = tmp_path / "mismatched"
    shutil.copytree(folder, mismatched)
    shutil.copy(other / "model.safetensors", mismatched / "model.safetensors")
    with pytest.raises(
        ValueError,
        match=r"does not match config.json \(16 tensors the config's network lacks, e.g. layer1\.0\.attention",
    ):
        load_model_folder(mismatched)
    (mismatched / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        load_model_folder(mismatched)
    with pytest.raises(ValueError, match="no weights are published for se_resnet18; pass weights=FOLDER"):
        torch.hub.load(str(ROOT), "se_resnet18", source="local", pretrained=True)
    with pytest.raises(ValueError, match=r"holds a csa_resnet18, not a se_resnet18"):
        torch.hub.load(str(ROOT), "se_resnet18", source="local", weights=str(folder))
    line = refusal(capsys, main, ["--ckpt", str(tmp_path / "nothing"), "--out", str(tmp_path / "f")])
    assert line.startswith("error: --ckpt: no such file or folder:")
