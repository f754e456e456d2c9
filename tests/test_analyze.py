"""The analysis tools: descriptor values and figures, Grad-CAM grids, bad input."""

import numpy as np
import pytest
import torch

from csa_lightning import analyze
from csa_lightning.attention.csa import spatial_autocorrelation

from .conftest import make_classification_checkpoint


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("analysis_ckpts")
    return {name: make_classification_checkpoint(folder / f"{name}.ckpt", name) for name in ("csa", "none")}


@pytest.fixture(scope="module")
def val_images(digits_betons):
    return str(digits_betons / "images_32px" / "val")


def _last_bn_outputs(network, inputs, keys):
    """The last-BN output of each block "layer{s}.{b}", read independently of the tool."""
    seen, handles = {}, []
    for key in keys:
        stage, block = key.replace("layer", "").split(".")
        blk = getattr(network, f"layer{stage}")[int(block)]
        handles.append(blk.last_bn.register_forward_hook(lambda _m, _i, out, k=key: seen.__setitem__(k, out)))
    with torch.no_grad():
        network.eval()(inputs)
    for h in handles:
        h.remove()
    return seen


def _inputs(val_images, limit, network_hparams=None):
    batches, _ = analyze.image_folder_batches(
        val_images, analyze.Preprocessing(32, 1.0, (0.306,) * 3, (0.324,) * 3), limit, 64
    )
    return torch.cat([b.inputs for b in batches])


@pytest.mark.slow
def test_saved_descriptors_equal_the_gates_own(checkpoints, val_images, tmp_path):
    out = tmp_path / "figs"
    written = analyze.main(
        [
            "descriptors",
            "--ckpt",
            checkpoints["csa"],
            "--images",
            val_images,
            "--limit",
            "24",
            "--batch-size",
            "10",
            "--out",
            str(out),
        ]
    )
    keys = ["layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    assert sorted(p.name for p in written) == sorted(
        [f"descriptors_{k}.npz" for k in keys] + [f"descriptors_{k}.png" for k in keys]
    )

    model = analyze.load_checkpoint_model(checkpoints["csa"])
    inputs = _inputs(val_images, 24)
    assert inputs.shape == (24, 3, 32, 32)
    outputs = _last_bn_outputs(model.network, inputs, keys)
    for key in keys:
        saved = np.load(out / f"descriptors_{key}.npz")
        stage, block = key.replace("layer", "").split(".")
        gate = getattr(model.network, f"layer{stage}")[int(block)].attention
        with torch.no_grad():
            own = gate.descriptors(outputs[key])
        prefix = "CSA-R18"
        assert int(saved[f"{prefix}__count"]) == 24
        for name in ("z", "q", "p"):
            np.testing.assert_allclose(
                saved[f"{prefix}__{name}"], own[name].double().mean(0).numpy(), rtol=1e-5, atol=1e-6
            )
        order = saved[f"{prefix}__order"]
        assert np.all(np.diff(saved[f"{prefix}__q"][order]) >= 0)  # sorted by q ascending
        np.testing.assert_allclose(saved[f"{prefix}__q_smoothed"], analyze.ema(saved[f"{prefix}__q"][order], 0.3))


@pytest.mark.slow
def test_model_without_gates_gets_z_and_q_but_no_p(checkpoints, val_images, tmp_path):
    out = tmp_path / "figs"
    analyze.main(
        [
            "descriptors",
            "--ckpt",
            checkpoints["none"],
            "--ckpt",
            checkpoints["csa"],
            "--images",
            val_images,
            "--limit",
            "12",
            "--blocks",
            "[[3, -1], [0, 0]]",
            "--out",
            str(out),
        ]
    )
    saved = np.load(out / "descriptors_layer4.1.npz")
    assert list(saved["labels"]) == ["ResNet-18", "CSA-R18"]
    assert "ResNet-18__p" not in saved and "CSA-R18__p" in saved
    model = analyze.load_checkpoint_model(checkpoints["none"])
    x = _last_bn_outputs(model.network, _inputs(val_images, 12), ["layer4.1"])["layer4.1"]
    expected = spatial_autocorrelation(x)
    for name in ("z", "q"):
        np.testing.assert_allclose(
            saved[f"ResNet-18__{name}"], expected[name].double().mean(0).numpy(), rtol=1e-5, atol=1e-6
        )
    # a block without a gate in a model with gates elsewhere: z and q, no p
    first = np.load(out / "descriptors_layer1.0.npz")
    assert "CSA-R18__q" in first and "CSA-R18__p" not in first
    assert (out / "descriptors_layer1.0.png").stat().st_size > 0


def test_ema_is_the_recursive_moving_average():
    np.testing.assert_allclose(analyze.ema(np.array([1.0, 2.0, 3.0]), 0.5), [1.0, 1.5, 2.25])
    np.testing.assert_allclose(analyze.ema(np.array([4.0, 0.0]), 1.0), [4.0, 0.0])
    with pytest.raises(ValueError, match="alpha"):
        analyze.ema(np.zeros(3), 0.0)


@pytest.mark.slow
def test_gradcam_grid_for_models_with_and_without_gates(checkpoints, val_images, tmp_path):
    out = tmp_path / "figs"
    written = analyze.main(
        [
            "gradcam",
            "--ckpt",
            checkpoints["none"],
            "--ckpt",
            checkpoints["csa"],
            "--images",
            val_images,
            "--limit",
            "3",
            "--out",
            str(out),
        ]
    )
    assert {p.name for p in written} == {"gradcam.npz", "gradcam.png"}
    saved = np.load(out / "gradcam.npz")
    assert list(saved["targets"]) == [0, 1, 2]  # one image per class folder, in class order
    assert list(saved["stages"]) == [3, 3]  # layer4 is 1x1 at 32 px: the tool moves to layer3
    for label in ("ResNet-18", "CSA-R18"):
        cams = saved[f"{label}__cam"]
        assert cams.shape == (3, 32, 32) and np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1
        probs = saved[f"{label}__prob"]
        assert ((probs >= 0) & (probs <= 1)).all()
    # the probabilities are the model's softmax for the target class
    model = analyze.load_checkpoint_model(checkpoints["csa"])
    with torch.no_grad():
        expected = model.network(_inputs(val_images, 3)).softmax(1)[torch.arange(3), torch.tensor([0, 1, 2])]
    np.testing.assert_allclose(saved["CSA-R18__prob"], expected.numpy(), rtol=1e-5)

    batches, names = analyze.image_folder_batches(val_images, analyze.Preprocessing(32, 1.0), 3, 3)
    batch = next(batches)
    maps = {label: saved[f"{label}__cam"] for label in ("ResNet-18", "CSA-R18")}
    probs = {label: saved[f"{label}__prob"] for label in ("ResNet-18", "CSA-R18")}
    fig = analyze.gradcam_figure(batch, [0, 1, 2], maps, probs, names)
    assert len(fig.axes) == 3 * 3  # rows: images; columns: input + 2 models
    assert fig.axes[1].get_title() == "ResNet-18\n0: p=%.2f" % probs["ResNet-18"][0]
    assert fig.axes[3].get_title() == "class 1"


@pytest.mark.slow
def test_gradcam_stage_can_be_chosen_and_checked(checkpoints, val_images, tmp_path):
    analyze.main(
        [
            "gradcam",
            "--ckpt",
            checkpoints["csa"],
            "--images",
            val_images,
            "--limit",
            "2",
            "--stage",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    assert list(np.load(tmp_path / "gradcam.npz")["stages"]) == [2]
    with pytest.raises(SystemExit) as exit_info:
        analyze.main(
            ["gradcam", "--ckpt", checkpoints["csa"], "--images", val_images, "--stage", "5", "--out", str(tmp_path)]
        )
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_descriptors_from_a_data_config(checkpoints, digits_betons, tmp_path):
    config = tmp_path / "digits.yaml"
    config.write_text(
        "model:\n  class_path: csa_lightning.tasks.ClassificationModule\n  init_args:\n    net:\n"
        "      class_path: csa_lightning.models.ResNetSpec\n      init_args: {depth: 18, num_classes: 10}\n"
        f"data:\n  class_path: csa_lightning.data.DigitsDataModule\n  init_args:\n    data_dir: {digits_betons}\n"
        "    batch_size: 16\n    num_workers: 1\n"
    )
    analyze.main(
        [
            "descriptors",
            "--ckpt",
            checkpoints["csa"],
            "--data",
            str(config),
            "--limit",
            "40",
            "--blocks",
            "[[3, -1]]",
            "--out",
            str(tmp_path / "figs"),
        ]
    )
    saved = np.load(tmp_path / "figs" / "descriptors_layer4.1.npz")
    assert int(saved["CSA-R18__count"]) == 40
    assert saved["CSA-R18__z"].shape == (512,) and np.isfinite(saved["CSA-R18__q"]).all()


@pytest.mark.slow
def test_run_folder_resolves_to_its_newest_last_checkpoint(checkpoints, tmp_path):
    import os
    import shutil

    folder = tmp_path / "run" / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    shutil.copy(checkpoints["none"], folder / "best.ckpt")
    shutil.copy(checkpoints["csa"], folder / "last.ckpt")
    os.utime(folder / "best.ckpt", (2e9, 2e9))  # newer, but not a last*.ckpt
    assert analyze.resolve_checkpoint(str(tmp_path / "run")) == str(folder / "last.ckpt")


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ckpt", "missing.ckpt", "--images", "."], "checkpoint missing.ckpt not found"),
        (["--ckpt", "{none}", "--images", "no/such/dir"], "image folder no/such/dir not found"),
        (["--ckpt", "{garbage}", "--images", "."], "is corrupt or not a torch checkpoint"),
        (["--ckpt", "{none}", "--ckpt", "{none}", "--label", "a", "--images", "."], "one label per checkpoint"),
    ],
)
def test_bad_input_is_one_line(argv, message, checkpoints, tmp_path, capsys):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    argv = [a.format(none=checkpoints["none"], garbage=garbage) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        analyze.main(["descriptors", *argv, "--out", str(tmp_path / "figs")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "figs").exists()  # a failed call leaves no empty output folder


def test_several_models_share_one_pass_over_the_images(checkpoints, val_images):
    """analyze descriptors with several checkpoints decodes each image once (it used to read and
    decode the whole set again per model) and gives each model what a run of its own gives."""
    from csa_lightning.analysis import collect_descriptors, collect_descriptors_of, load_models

    models = load_models([checkpoints["csa"], checkpoints["none"]])
    prep = analyze.Preprocessing(32, 1.0, (0.306,) * 3, (0.324,) * 3)
    yielded = []

    def counted():
        batches, _ = analyze.image_folder_batches(val_images, prep, 20, 8)
        for batch in batches:
            yielded.append(len(batch.inputs))
            yield batch

    together = collect_descriptors_of({m.label: m.network for m in models}, counted())
    assert yielded == [8, 8, 4]  # one pass: 20 images read once for both models
    for m in models:
        alone = collect_descriptors(m.network, analyze.image_folder_batches(val_images, prep, 20, 8)[0])
        assert together[m.label].keys() == alone.keys()
        for key in alone:
            for name in alone[key]:
                np.testing.assert_allclose(together[m.label][key][name], alone[key][name], rtol=1e-6, atol=1e-9)


def test_stages_and_last_bn_are_the_models_own():
    from csa_lightning.analysis import last_bn, stage_blocks
    from csa_lightning.models import attention_resnet

    model = attention_resnet(50, "se", num_classes=10)
    assert stage_blocks(model) == model.stage_blocks()
    assert last_bn(model.layer2[0]) is model.layer2[0].bn3
    with pytest.raises(ValueError, match="has no stage_blocks"):
        stage_blocks(torch.nn.Sequential())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--size", "0"], "error: --size must be a positive image side in pixels, got 0"),
        (["--crop-ratio", "0"], "error: --crop-ratio must be in (0, 1] (crop side / shorter image side), got 0.0"),
        (
            ["--std", "0", "1", "1"],
            "error: --std must be three positive numbers (a zero divides by zero), got [0.0, 1.0, 1.0]",
        ),
        (["--alpha", "2"], "error: --alpha must be in (0, 1] (1: no smoothing), got 2.0"),
        (["--batch-size", "0"], "error: --batch-size must be a positive integer, got 0"),
        (["--limit", "0"], "error: --limit must be a positive number of images, got 0"),
    ],
)
def test_bad_analysis_options_are_one_line_before_any_checkpoint_is_read(extra, message, tmp_path, capsys):
    from csa_lightning.analysis.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["descriptors", "--ckpt", str(tmp_path / "never-read.ckpt"), "--images", str(tmp_path), *extra])
    assert exit_info.value.code == 2 and capsys.readouterr().err.strip() == message


def test_a_torch_file_that_is_no_lightning_checkpoint_is_named(tmp_path, capsys):
    """Before: 'error: 'pytorch-lightning_version'' (a KeyError's text)."""
    from csa_lightning.analysis.cli import main

    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(SystemExit):
        main(["descriptors", "--ckpt", str(tmp_path / "plain.ckpt"), "--images", str(tmp_path)])
    assert "plain.ckpt is not a Lightning checkpoint (no state_dict or Lightning version)" in capsys.readouterr().err
