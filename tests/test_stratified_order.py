"""Evaluation order: every prefix of a validation epoch is a stratified sample of the classes, on
every classification loader, and predictions.csv's index and path columns follow the order
(issue: nothing silently wrong; a partial validation used to score a few classes only)."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from csa_lightning.data import DigitsMemoryDataModule, ImageFolderDataModule, stratified_order


@pytest.mark.parametrize("counts", [[36, 36, 35, 37, 36], [1, 50, 7], [5], [3, 3, 3, 3], [1000, 1, 1]])
def test_every_prefix_is_stratified_to_within_one(counts):
    labels = np.repeat(np.arange(len(counts)), counts)  # stored class by class, as ImageFolder sorts
    order = stratified_order(labels)
    assert sorted(order.tolist()) == list(range(len(labels)))
    seen = np.zeros(len(counts))
    share = np.asarray(counts) / len(labels)
    for k, index in enumerate(order, start=1):
        seen[labels[index]] += 1
        assert np.all(np.abs(seen - k * share) <= 1.0 + 1e-9), (k, seen)
    for c in range(len(counts)):  # within a class, the stored order is kept
        members = [i for i in order if labels[i] == c]
        assert members == sorted(members)


def test_stratified_order_of_nothing_and_of_shuffled_labels():
    assert stratified_order([]).tolist() == []
    labels = np.array([2, 0, 1, 0, 2, 1])
    order = stratified_order(labels)
    assert sorted(labels[order[:3]].tolist()) == [0, 1, 2]


def _tree(root, per_class):
    for c, n in enumerate(per_class):
        (root / str(c)).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), color=(c * 60, i * 20, 0)).save(root / str(c) / f"{i}.png")
    return root


def test_image_folder_evaluates_in_stratified_order(tmp_path):
    val = _tree(tmp_path / "val", [4, 4, 4])
    data = ImageFolderDataModule(train_path=str(val), val_path=str(val), batch_size=3, num_workers=0,
                                 resolution=8, val_crop_ratio=1.0, flip=False)  # fmt: skip
    data.setup("validate")
    batches = [y.tolist() for _, y in data.val_dataloader()]
    assert all(sorted(b) == [0, 1, 2] for b in batches)


def test_memory_digits_evaluate_in_stratified_order():
    data = DigitsMemoryDataModule(batch_size=20)
    data.setup("validate")
    _, first = next(iter(data.val_dataloader()))
    assert torch.bincount(first, minlength=10).tolist() == [2] * 10


def test_predictions_csv_names_each_rows_own_file_and_label(tmp_path, monkeypatch):
    """cli.py predict on an ImageFolder: the path column is the row's file, its class folder the label."""
    from csa_lightning.cli import main

    from .conftest import DEMO_CONFIG

    monkeypatch.chdir(tmp_path)
    val = _tree(tmp_path / "val", [3, 5, 2, 4, 3, 3, 2, 4, 3, 3])
    predicted = main(["predict", "--config", str(DEMO_CONFIG), "--data", "csa_lightning.data.ImageFolderDataModule",
                      "--data.train_path", str(val), "--data.val_path", str(val), "--data.num_workers", "0",
                      "--data.resolution", "8", "--data.batch_size", "4", "--data.flip", "false",
                      "--data.val_crop_ratio", "1.0"])  # fmt: skip
    written = next(c for c in predicted.trainer.callbacks if type(c).__name__ == "PredictionWriter").path
    rows = list(csv.DictReader(open(written)))
    assert len(rows) == 32 and sorted(int(r["index"]) for r in rows) == list(range(32))
    assert all(Path(r["path"]).parent.name == r["label"] for r in rows)
    assert len({r["label"] for r in rows[:10]}) >= 9  # the first rows span the classes
