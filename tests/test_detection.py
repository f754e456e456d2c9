"""Detection: COCO metric agreement, backbone transfer, configs, training through the CLI, resume."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from csa_lightning.cli import build_cli, main
from csa_lightning.data import COCODataModule
from csa_lightning.models import RCNNSpec
from csa_lightning.tasks import ClassificationModule, DetectionModule, detection_metric

from .conftest import CONFIGS, TIMEOUT, make_classification_checkpoint

DEMO_DETECTION = {
    "faster_rcnn": CONFIGS / "demo" / "digits_faster_rcnn_csa.yaml",
    "mask_rcnn": CONFIGS / "demo" / "digits_mask_rcnn_csa.yaml",
}
COCO_ROWS = {"r50": "none", "se_r50": "se", "eca_r50": "eca", "gct_r50": "gct", "csa_r50": "csa"}
TINY_DATA = [
    "--data.init_args.num_train",
    "8",
    "--data.init_args.num_val",
    "4",
    "--data.init_args.canvas_size",
    "64",
    "--data.init_args.digit_size",
    "[16, 24]",
    "--data.init_args.batch_size",
    "2",
    "--data.init_args.num_workers",
    "0",
    "--model.init_args.net.init_args.min_size",
    "64",
    "--model.init_args.net.init_args.max_size",
    "64",
]


# ---------------------------------------------------------------------------------------------
# COCO evaluation


def _random_detections(seed: int, images: int = 12, size: int = 320):
    """Targets (with crowd regions and COCO-style areas) and noisy predictions around them."""
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for _ in range(images):
        n = int(torch.randint(1, 6, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * (size - 150)
        wh = 8 + torch.rand(n, 2, generator=g) ** 2 * 140  # small, medium and large objects
        boxes = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(1, 4, (n,), generator=g)
        crowd = (torch.rand(n, generator=g) < 0.2).long()
        area = wh.prod(1) * (0.5 + 0.5 * torch.rand(n, generator=g))  # annotation (mask) area, not the box's
        targets.append({"boxes": boxes, "labels": labels, "iscrowd": crowd, "area": area})
        keep = torch.rand(n, generator=g) < 0.85
        jitter = torch.randn(n, 4, generator=g) * 6
        extra = int(torch.randint(0, 3, (1,), generator=g))
        fp_xy = torch.rand(extra, 2, generator=g) * (size - 60)
        fp = torch.cat([fp_xy, fp_xy + 10 + torch.rand(extra, 2, generator=g) * 50], 1)
        p_boxes = torch.cat([(boxes + jitter)[keep], fp]).clamp(0, size)
        p_labels = torch.cat([labels[keep], torch.randint(1, 4, (extra,), generator=g)])
        p_scores = torch.rand(len(p_boxes), generator=g)
        preds.append({"boxes": p_boxes, "scores": p_scores, "labels": p_labels})
    return preds, targets, size


def _pycocotools_stats(preds, targets, size):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    gt = {"images": [], "annotations": [], "categories": [{"id": c} for c in (1, 2, 3)]}
    dt = []
    for image_id, (p, t) in enumerate(zip(preds, targets)):
        gt["images"].append({"id": image_id, "width": size, "height": size})
        for b, label, c, a in zip(t["boxes"], t["labels"], t["iscrowd"], t["area"]):
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": xywh(b),
                    "iscrowd": int(c),
                    "area": float(a),
                }
            )
        for b, label, s in zip(p["boxes"], p["labels"], p["scores"]):
            dt.append({"image_id": image_id, "category_id": int(label), "bbox": xywh(b), "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dt)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[:6]  # AP, AP50, AP75, APs, APm, APl


@pytest.mark.parametrize("seed", [0, 1])
def test_module_metric_equals_pycocotools_cocoeval(seed):
    preds, targets, size = _random_detections(seed)
    assert any(t["iscrowd"].any() for t in targets)
    metric = detection_metric(("bbox",))
    metric.update(*DetectionModule.metric_inputs(preds, targets))
    ours = metric.compute()
    reference = _pycocotools_stats(preds, targets, size)
    got = [float(ours[k]) for k in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")]
    np.testing.assert_allclose(got, reference, atol=1e-4)
    assert 0.05 < reference[0] < 0.95  # a non-trivial case: neither all right nor all wrong


# ---------------------------------------------------------------------------------------------
# Backbone transfer


@pytest.mark.slow
def test_classification_checkpoint_loads_into_the_detector_backbone(tmp_path):
    ckpt = make_classification_checkpoint(tmp_path / "cls.ckpt", "csa", depth=18)
    classifier = ClassificationModule.load_from_checkpoint(ckpt, map_location="cpu").model.state_dict()
    detector = DetectionModule(
        RCNNSpec(depth=18, attention="csa", num_classes=10, min_size=64, max_size=64), backbone_weights=ckpt
    )
    body = detector.model.backbone.body
    before = {k: v.clone() for k, v in body.state_dict().items()}
    report = detector.load_backbone_weights()

    # every backbone tensor came from the checkpoint; none new, none silently skipped
    assert report.missing == []
    assert sorted(report.loaded) == sorted(body.state_dict())
    for key, value in body.state_dict().items():
        assert torch.equal(value, classifier[key]), key
    assert any(not torch.equal(before[k], classifier[k]) for k in before)  # loading changed something
    # what was not loaded is the classifier head and BN step counters FrozenBatchNorm has no use for
    assert {k for k in report.ignored if not k.endswith("num_batches_tracked")} == {"fc.weight", "fc.bias"}
    assert report.source_prefix == "model."
    # pretrained: FrozenBatchNorm, and layer1 and the stem frozen (3 trainable stages)
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert not any(p.requires_grad for n, p in body.named_parameters() if n.startswith(("conv1", "layer1")))
    assert all(p.requires_grad for n, p in body.named_parameters() if n.startswith(("layer2", "layer3", "layer4")))
    assert any("attention" in n for n, _ in body.named_parameters())


@pytest.mark.slow
def test_a_gate_mismatch_in_the_backbone_is_reported(tmp_path):
    ckpt = make_classification_checkpoint(tmp_path / "plain.ckpt", "none", depth=18, steps=1)
    detector = DetectionModule(
        RCNNSpec(depth=18, attention="se", num_classes=10, min_size=64, max_size=64), backbone_weights=ckpt
    )
    report = detector.load_backbone_weights()
    assert report.missing and all(".attention." in k for k in report.missing)  # SE gates: new, reported


# ---------------------------------------------------------------------------------------------
# Configs


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["faster_rcnn", "mask_rcnn"])
@pytest.mark.parametrize("row", sorted(COCO_ROWS))
def test_every_coco_config_is_the_paper_recipe(arch, row, in_tmp_cwd):
    path = CONFIGS / "coco" / f"{arch}_{row}.yaml"
    cli = build_cli(["--config", str(path)], run=False)
    hp, net = cli.model.hparams, cli.model.net_spec
    assert isinstance(cli.model, DetectionModule) and isinstance(cli.datamodule, COCODataModule)
    assert (net.architecture, net.depth, net.attention) == (arch, 50, COCO_ROWS[row])
    sgd, steps = hp.optimizer["init_args"], hp.lr_schedule["init_args"]
    assert (sgd["lr"], hp.lr_reference_batch, sgd["momentum"], sgd["weight_decay"]) == (0.02, 16, 0.9, 1e-4)
    assert steps["milestones"] == [16, 22] and steps["warmup_iters"] == 500 and cli.trainer.max_epochs == 24
    assert net.trainable_layers == 3 and net.frozen_bn and hp.backbone_weights == f"runs/{row}"
    assert (net.min_size, net.max_size, net.box_batch_size_per_image, net.rpn_post_nms_top_n_train) == (
        800,
        1333,
        512,
        2000,
    )
    assert cli.datamodule.masks == (arch == "mask_rcnn") and cli.datamodule.batch_size == 2
    assert cli.trainer.default_root_dir == f"runs/coco/{arch}_{row}"
    gates = [n for n, _ in cli.model.model.backbone.body.named_modules() if n.endswith(".attention")]
    assert len(gates) == {"none": 0, "csa": 4}.get(COCO_ROWS[row], 16)


# ---------------------------------------------------------------------------------------------
# Training through the CLI


def _fit(config, *extra):
    return main(["fit", "--config", str(config), *TINY_DATA, "--model.init_args.backbone_weights", "null", *extra])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["faster_rcnn", "mask_rcnn"])
def test_demo_configs_train_and_report_coco_metrics(arch, in_tmp_cwd):
    cli = _fit(DEMO_DETECTION[arch], "--trainer.fast_dev_run", "2")
    metrics = cli.trainer.callback_metrics
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert all(f"val/box_{n}" in metrics for n in names)
    assert all(f"val/mask_{n}" in metrics for n in names) == (arch == "mask_rcnn")
    assert torch.isfinite(metrics["train/loss"])


@pytest.mark.slow
def test_resume_restores_optimizer_scheduler_and_epoch(in_tmp_cwd):
    config = DEMO_DETECTION["faster_rcnn"]
    common = [
        "--trainer.limit_train_batches",
        "3",
        "--trainer.limit_val_batches",
        "1",
        "--model.init_args.lr_schedule.warmup_iters",
        "4",
        "--model.init_args.lr_schedule.milestones",
        "[1]",
    ]
    first = _fit(config, "--trainer.max_epochs", "1", *common)
    assert first.trainer.global_step == 3
    lr_after_first = first.trainer.optimizers[0].param_groups[0]["lr"]
    second = main(
        [
            "fit",
            "--config",
            str(config),
            *TINY_DATA,
            "--model.init_args.backbone_weights",
            "null",
            "--trainer.max_epochs",
            "2",
            *common,
            "--ckpt_path",
            "last",
        ]
    )
    trainer = second.trainer
    assert trainer.current_epoch == 2 and trainer.global_step == 6
    schedule = trainer.lr_scheduler_configs[0].scheduler
    assert schedule.last_epoch == 6  # one scheduler step per optimiser step, continued
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    base = schedule.base_lrs[0]
    # warm-up over 4 steps, then lr / 10 from epoch 1 (steps 3..): the resumed run continued it
    # (at the end of a run the lr of the next step is already set: step 3, in warm-up and in epoch 1)
    assert lr_after_first == pytest.approx(base * (0.001 * (1 - 3 / 4) + 3 / 4) * 0.1)
    assert lr == pytest.approx(base * 0.1)
    momentum = [s["momentum_buffer"] for s in trainer.optimizers[0].state.values()]
    assert momentum and all(torch.isfinite(m).all() for m in momentum)
    logs = sorted(Path("runs/demo_digits_faster_rcnn_csa").rglob("metrics.csv"))
    assert len(logs) == 2  # the interrupted run's log kept, the resumed one beside it


@pytest.mark.slow
def test_wrong_class_count_is_one_line(in_tmp_cwd, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _fit(
            DEMO_DETECTION["faster_rcnn"],
            "--model.init_args.net.init_args.num_classes",
            "80",
            "--trainer.fast_dev_run",
            "1",
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the data has 10 object categories but model.net.num_classes is 80; set --model.net.num_classes 10" in err


@pytest.mark.slow
def test_missing_backbone_weights_are_one_line(in_tmp_cwd, capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                str(DEMO_DETECTION["faster_rcnn"]),
                *TINY_DATA,
                "--model.init_args.backbone_weights",
                "no/such/run",
                "--trainer.fast_dev_run",
                "1",
            ]
        )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: backbone weights: no such file or folder: no/such/run; train it first")
    assert "make demo" in err  # the command that makes the demos' backbone
    # an existing run folder without a checkpoint: the same one line, and nothing is trained
    Path("runs/empty").mkdir(parents=True)
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                str(DEMO_DETECTION["faster_rcnn"]),
                *TINY_DATA,
                "--model.init_args.backbone_weights",
                "runs/empty",
                "--trainer.fast_dev_run",
                "1",
            ]
        )
    assert "error: backbone weights: no .ckpt file under runs/empty" in capsys.readouterr().err
    assert not list(Path("runs/empty").rglob("*.ckpt"))


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.xdist_group("ddp")  # one DDP launch at a time: each picks a free port for gloo
def test_ddp_two_cpu_processes_shard_coco_batches_without_repeats(tmp_path):
    """Faster R-CNN under DDP with 2 CPU processes (gloo): training batches sharded by Lightning
    through the grouped batch sampler, validation sharded without padding (no image evaluated
    twice), box AP synchronised across ranks."""
    import os
    import subprocess
    import sys

    from .conftest import ROOT

    probe_dir = tmp_path / "probe"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), PROBE_DIR=str(probe_dir))
    data = TINY_DATA[:2] + TINY_DATA[4:]  # every tiny setting but num_val
    cmd = [
        sys.executable, str(ROOT / "cli.py"), "fit", "--config", str(DEMO_DETECTION["faster_rcnn"]), *data,
        "--data.init_args.num_val", "5", "--data.init_args.data_dir", str(tmp_path / "data"),
        "--model.init_args.backbone_weights", "null",
        "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_epochs", "1",
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.callbacks+=ddp_probe.RecordDetectionShards",
    ]  # fmt: skip
    out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted(probe_dir.glob("detection_rank*.json"))]
    assert [r["rank"] for r in records] == [0, 1] and all(r["world_size"] == 2 for r in records)
    # 8 training images, batch 2 per rank: 2 batches each, disjoint halves
    train = [set(r["train_ids"]) for r in records]
    assert all(len(r["train_ids"]) == 4 for r in records) and not train[0] & train[1]
    # 5 validation images: 3 + 2, each once (Lightning's own sharding would pad to 3 + 3)
    assert sorted(records[0]["val_ids"] + records[1]["val_ids"]) == [1, 2, 3, 4, 5]
    # each rank's AP covers all 5 images (gathered), so the ranks agree
    assert all(r["evaluated_images"] == 5 for r in records)
    assert records[0]["box_AP50"] == records[1]["box_AP50"]


@pytest.mark.slow
def test_backbone_from_a_run_folder_loads_its_newest_checkpoint(in_tmp_cwd):
    ckpt = make_classification_checkpoint(
        in_tmp_cwd / "runs/tiny_backbone/version_0/checkpoints/last.ckpt", "csa", depth=18
    )
    cli = main(
        [
            "fit",
            "--config",
            str(DEMO_DETECTION["faster_rcnn"]),
            *TINY_DATA,
            "--model.init_args.backbone_weights",
            "runs/tiny_backbone",
            "--trainer.fast_dev_run",
            "1",
        ]
    )
    report = cli.model.backbone_report
    assert (
        report is not None
        and report.missing == []
        and len(report.loaded) == len(cli.model.model.backbone.body.state_dict())
    )
    classifier = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    body = cli.model.model.backbone.body.state_dict()
    # layer1 is frozen (3 trainable stages), so the training step left the loaded values in place
    assert torch.equal(body["layer1.1.attention.mlp.fc1.weight"], classifier["model.layer1.1.attention.mlp.fc1.weight"])


def test_detector_spec_defaults_are_torchvisions():
    """RCNNSpec is the one place the detector's options are written; their defaults are torchvision's."""
    import inspect

    from torchvision.models.detection import FasterRCNN

    ours = inspect.signature(RCNNSpec).parameters
    theirs = inspect.signature(FasterRCNN).parameters
    shared = [name for name in ours if name in theirs and name != "num_classes"]
    assert len(shared) >= 10
    assert all(ours[name].default == theirs[name].default for name in shared), shared
    module = inspect.signature(DetectionModule).parameters
    assert not set(shared) & set(module), "the task must not repeat the network's options"


@pytest.mark.slow
def test_default_heads_are_torchvisions():
    """With no slimming, the detector has exactly torchvision's Mask R-CNN R50-FPN parameters."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=81)
    ours = RCNNSpec("mask_rcnn", 80, 50, None, trainable_layers=5, frozen_bn=False).build()

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(ours) == count(reference) == 44_400_693


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["faster_rcnn", "mask_rcnn"])
def test_authors_backbone_configs(arch, in_tmp_cwd):
    """The authors' detection backbone: CSA in all 16 Bottlenecks, pooled hybrid distances, the
    2x recipe of the paper rows, torchvision's ResNet-50 weights as the starting point."""
    from csa_lightning.attention import CSA

    cli = build_cli(["--config", str(CONFIGS / "coco" / f"{arch}_csa_r50_authors.yaml")], run=False)
    hp, net = cli.model.hparams, cli.model.net_spec
    assert (net.architecture, net.depth, net.attention, net.placement) == (arch, 50, "csa", "every_block")
    sgd, steps = hp.optimizer["init_args"], hp.lr_schedule["init_args"]
    assert (sgd["lr"], hp.lr_reference_batch, steps["milestones"], cli.trainer.max_epochs) == (0.02, 16, [16, 22], 24)
    assert hp.backbone_weights == "data/resnet50-0676ba61.pth"
    gates = [m for n, m in cli.model.model.backbone.body.named_modules() if n.endswith(".attention")]
    assert len(gates) == 16 and all(isinstance(g, CSA) for g in gates)
    assert {(g.contiguity, g.distance) for g in gates} == {("hybrid", "pooled")}
    assert cli.trainer.default_root_dir == f"runs/coco/{arch}_csa_r50_authors"


@pytest.mark.slow
def test_predict_writes_coco_results(in_tmp_cwd, capsys):
    """cli.py predict on a detector writes predictions.json in COCO's results format, whose ids and
    categories pycocotools' loadRes accepts against the validation annotations."""
    from pycocotools.coco import COCO

    cli = _fit(DEMO_DETECTION["faster_rcnn"], "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1")
    from csa_lightning.tasks.callbacks import checkpoint_files

    _, ckpt = checkpoint_files(cli.trainer)  # last.ckpt, written by the callback without a monitor
    predicted = main(["predict", "--config", str(DEMO_DETECTION["faster_rcnn"]), *TINY_DATA,
                      "--model.init_args.backbone_weights", "null", "--ckpt_path", ckpt])  # fmt: skip
    path = next(c for c in predicted.trainer.callbacks if type(c).__name__ == "PredictionWriter").path
    assert path.name == "predictions.json" and f"predictions: {path}" in capsys.readouterr().out
    results = json.loads(path.read_text())
    gt = COCO(str(predicted.datamodule.val_set.annotation_file))
    for r in results:
        assert r["image_id"] in gt.imgs and r["category_id"] in gt.cats and len(r["bbox"]) == 4
    if results:
        gt.loadRes(results)
