"""``cli.py predict``'s output files: predictions.csv (classification) or COCO results JSON (detection)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from lightning.pytorch.callbacks import BasePredictionWriter

__all__ = ["PredictionWriter"]


class PredictionWriter(BasePredictionWriter):
    """``cli.py predict`` writes what it predicted, and says where in its last line.

    Classification: ``predictions.csv`` with one row per image in loader order: ``index``,
    ``path`` (the image file, where the data set knows it), ``label`` (where the data has one), then
    ``class_1, prob_1 .. class_k, prob_k`` (the model's top k, k = min(5, classes)). Detection:
    ``predictions.json`` in COCO's results format (``image_id``, ``category_id``, ``bbox`` as
    x, y, width, height, ``score``), ready for pycocotools' ``loadRes``. Written to the run's log
    folder (or ``default_root_dir``); under DDP each process writes ``predictions_rank{r}.*``.
    """

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")
        self.path: Optional[Path] = None

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        suffix = f"_rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        batches = _first_dataloader(predictions)
        if batches and isinstance(batches[0], list):  # detection: a list of per-image dicts per batch
            self.path = folder / f"predictions{suffix}.json"
            self.path.write_text(json.dumps(_coco_results(batches, trainer)))
        else:
            self.path = folder / f"predictions{suffix}.csv"
            _write_classification_csv(self.path, batches, trainer, _sample_indices(trainer, batch_indices))

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.path is not None and trainer.is_global_zero:
            print(f"predictions: {self.path}")


def _first_dataloader(predictions: list) -> list:
    """Lightning gives one list of batch outputs per predict dataloader when there are several."""
    if predictions and isinstance(predictions[0], list) and predictions[0]:
        first = predictions[0][0]
        if isinstance(first, list) or (isinstance(first, dict) and "top_classes" in first):
            return predictions[0]
    return predictions


def _predict_loader(trainer):
    loaders = trainer.predict_dataloaders
    return loaders[0] if isinstance(loaders, (list, tuple)) else loaders


def _dataset_paths(trainer) -> Optional[list]:
    samples = getattr(getattr(_predict_loader(trainer), "dataset", None), "samples", None)  # torchvision ImageFolder
    return [str(s[0]) for s in samples] if samples else None


def _sample_indices(trainer, batch_indices) -> Optional[list]:
    """The data set index of every predicted row, in row order: what Lightning recorded from a torch
    loader's sampler, else the loader's own ``sample_indices`` (ffcv), else None (row = index).
    The loaders evaluate in a stratified order, not in stored order, so row and index differ."""
    recorded = _first_dataloader(batch_indices or [])
    if recorded and all(isinstance(b, (list, tuple)) and b for b in recorded):
        return [int(i) for b in recorded for i in b]
    own = getattr(_predict_loader(trainer), "sample_indices", None)
    return [int(i) for i in own] if own is not None else None


def _write_classification_csv(path: Path, batches: list, trainer, indices: Optional[list] = None) -> None:
    import csv

    paths = _dataset_paths(trainer)
    k = int(batches[0]["top_classes"].shape[1]) if batches else 0
    header = ["index", "path", "label"] + [f"{name}_{i}" for i in range(1, k + 1) for name in ("class", "prob")]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        position = 0
        for batch in batches:
            labels = batch.get("label")
            for row in range(len(batch["top_classes"])):
                index = indices[position] if indices is not None and position < len(indices) else position
                cells = [index, paths[index] if paths and index < len(paths) else ""]
                cells.append(int(labels[row]) if labels is not None else "")
                for c, p in zip(batch["top_classes"][row].tolist(), batch["top_probs"][row].tolist()):
                    cells += [int(c), f"{p:.6f}"]
                writer.writerow(cells)
                position += 1


def _coco_results(batches: list, trainer) -> list:
    """torchvision detections -> COCO results; labels 1..K map back to the data's category ids."""
    datamodule = getattr(trainer, "datamodule", None)
    category_ids = getattr(getattr(datamodule, "val_set", None), "category_ids", None)
    results, index = [], 0
    for batch in batches:
        for detections in batch:
            image_id = int(detections.get("image_id", index))
            for box, label, score in zip(
                detections["boxes"].tolist(), detections["labels"].tolist(), detections["scores"].tolist()
            ):
                category = category_ids[int(label) - 1] if category_ids else int(label)
                x1, y1, x2, y2 = box
                results.append({"image_id": image_id, "category_id": category,
                                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                "score": round(float(score), 5)})  # fmt: skip
            index += 1
    return results
