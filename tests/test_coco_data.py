"""COCO-format data: annotation handling, masks, flips, grouping, the digits detection set, errors."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from csa_lightning.data import COCODataModule, DigitsCOCODataModule
from csa_lightning.data.coco import COCODetection, GroupedBatchSampler, aspect_ratio_groups
from csa_lightning.data.digits_coco import write_digits_coco


def _rle(mask: np.ndarray, compressed: bool = True) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    # uncompressed RLE: run lengths in column-major order, starting with zeros
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def write_tiny_coco(root, with_missing_image=False):
    """Three images; categories 3 and 7 (COCO-like gaps); polygons, both RLE kinds, a crowd region,
    a degenerate box and an unknown category."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    sizes = {1: (60, 40), 2: (50, 50), 3: (40, 60)}  # id -> (width, height)
    for image_id, (w, h) in sizes.items():
        Image.fromarray(np.full((h, w, 3), 40 * image_id, dtype=np.uint8)).save(root / "images" / f"{image_id}.png")
    m2 = np.zeros((50, 50), dtype=np.uint8)
    m2[10:30, 5:25] = 1
    m3 = np.zeros((50, 50), dtype=np.uint8)
    m3[35:45, 30:48] = 1
    crowd = np.zeros((60, 40), dtype=np.uint8)
    crowd[5:20, 5:30] = 1
    anns = [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 3,
            "bbox": [10, 5, 20, 10],
            "area": 200.0,
            "iscrowd": 0,
            "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]],
        },  # polygon
        {
            "id": 2,
            "image_id": 2,
            "category_id": 7,
            "bbox": [5, 10, 20, 20],
            "area": 400.0,
            "iscrowd": 0,
            "segmentation": _rle(m2, compressed=True),
        },
        {
            "id": 3,
            "image_id": 2,
            "category_id": 3,
            "bbox": [30, 35, 18, 10],
            "area": 180.0,
            "iscrowd": 0,
            "segmentation": _rle(m3, compressed=False),
        },
        {
            "id": 4,
            "image_id": 3,
            "category_id": 7,
            "bbox": [5, 5, 25, 15],
            "area": 375.0,
            "iscrowd": 1,
            "segmentation": _rle(crowd, compressed=False),
        },  # image 3 holds only a crowd region
        {
            "id": 5,
            "image_id": 1,
            "category_id": 3,
            "bbox": [12, 12, 0, 5],
            "area": 0.0,
            "iscrowd": 0,
            "segmentation": [[12, 12, 12, 17, 12, 17]],
        },  # degenerate: no width
        {
            "id": 6,
            "image_id": 1,
            "category_id": 99,
            "bbox": [1, 1, 5, 5],
            "area": 25.0,
            "iscrowd": 0,
            "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]],
        },  # unknown category
    ]
    images = [{"id": i, "file_name": f"{i}.png", "width": w, "height": h} for i, (w, h) in sizes.items()]
    if with_missing_image:
        images.append({"id": 4, "file_name": "gone.png", "width": 10, "height": 10})
        anns.append({"id": 7, "image_id": 4, "category_id": 3, "bbox": [1, 1, 5, 5], "area": 25.0, "iscrowd": 0})
    cats = [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}]
    for split in ("train", "val"):
        (root / "annotations" / f"{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats})
        )
    return root


def _module(root, **kwargs):
    return COCODataModule(
        root=str(root),
        train_images="images",
        val_images="images",
        train_annotations="annotations/train.json",
        val_annotations="annotations/val.json",
        num_workers=0,
        **kwargs,
    )


def test_training_and_validation_targets(tmp_path, caplog):
    root = write_tiny_coco(tmp_path / "coco")
    dm = _module(root, masks=True, batch_size=2, flip_prob=0.0)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    # one warning per split, counting both skipped kinds
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 2 and all(
        "1 with a degenerate box" in w and "1 with an unknown category" in w for w in warnings
    )
    assert dm.num_classes == 2 and dm.class_names == ["three", "seven"]

    train = dm.train_set
    assert train.ids == [1, 2]  # image 3 has only a crowd region: no training target
    image, target = train[1]  # image 2
    assert image.shape == (3, 50, 50) and image.dtype == torch.float32 and float(image.max()) <= 1.0
    assert target["labels"].tolist() == [2, 1]  # category 7 -> 2, category 3 -> 1
    assert target["boxes"].tolist() == [[5, 10, 25, 30], [30, 35, 48, 45]]
    assert target["masks"].shape == (2, 50, 50) and target["masks"].dtype == torch.uint8
    assert target["masks"][0].sum() == 400 and target["masks"][1].sum() == 180  # compressed and plain RLE
    _, poly = train[0]
    assert poly["masks"].shape == (1, 40, 60) and 150 < int(poly["masks"].sum()) <= 231  # the polygon's pixels

    val = dm.val_set
    assert val.ids == [1, 2, 3]
    _, crowd_target = val[2]
    assert crowd_target["iscrowd"].tolist() == [1] and crowd_target["area"].tolist() == [375.0]
    assert crowd_target["masks"].sum() == 15 * 25


def test_flip_moves_boxes_and_masks_together(tmp_path):
    root = write_tiny_coco(tmp_path / "coco")
    flipped = COCODetection(
        str(root / "images"), str(root / "annotations/train.json"), train=True, masks=True, flip_prob=1.0
    )
    plain = COCODetection(str(root / "images"), str(root / "annotations/train.json"), train=True, masks=True)
    _, f = flipped[1]
    _, p = plain[1]
    assert torch.equal(f["masks"], p["masks"].flip(-1))
    for box, mask in zip(f["boxes"], f["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_grouped_batches_share_an_aspect_ratio_and_cover_each_index_once():
    ratios = [0.5, 2.0] * 10 + [1.0] * 5  # 25 images in three groups
    groups = aspect_ratio_groups(ratios, 3)
    assert len(set(groups)) == 3
    sampler = GroupedBatchSampler(
        torch.utils.data.RandomSampler(range(25), generator=torch.Generator().manual_seed(0)), groups, 4
    )
    batches = list(sampler)
    assert len(batches) == len(sampler) == 25 // 4
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) and all(len(b) == 4 for b in batches)
    mixed = [b for b in batches if len({groups[i] for i in b}) > 1]
    assert len(mixed) <= 1  # only the leftovers at the end may mix groups


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no_annotations", "annotation file"),
        ("bad_json", "is not valid JSON"),
        ("missing_image", "gone.png"),
        ("no_root", "COCO root"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path, damage, message):
    root = write_tiny_coco(tmp_path / "coco", with_missing_image=damage == "missing_image")
    if damage == "no_annotations":
        (root / "annotations" / "train.json").unlink()
    elif damage == "bad_json":
        (root / "annotations" / "train.json").write_text("{not json")
    elif damage == "no_root":
        root = tmp_path / "nowhere"
    with pytest.raises((FileNotFoundError, ValueError)) as err:
        _module(root).setup("fit")
    text = str(err.value)
    assert message in text and "\n" not in text


@pytest.mark.slow
def test_digits_detection_set_is_real_cached_and_consistent(tmp_path):
    root = write_digits_coco(
        str(tmp_path / "d"), canvas=96, num_train=12, num_val=6, digits_per_image=(2, 4), digit_size=(16, 32), seed=3
    )
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    assert len(data["images"]) == 12 and {c["name"] for c in data["categories"]} == {str(d) for d in range(10)}
    assert 24 <= len(data["annotations"]) <= 48
    stamp = (root / "train" / "000001.png").stat().st_mtime_ns
    assert (
        write_digits_coco(str(tmp_path / "d")) == root and (root / "train" / "000001.png").stat().st_mtime_ns == stamp
    )

    dm = DigitsCOCODataModule(
        data_dir=str(tmp_path / "cache"),
        canvas_size=96,
        num_train=12,
        num_val=6,
        digits_per_image=(2, 4),
        digit_size=(16, 32),
        seed=3,
        masks=True,
        num_workers=0,
    )
    dm.setup("fit")
    assert dm.num_classes == 10
    for image, target in (dm.train_set[i] for i in range(len(dm.train_set))):
        assert image.shape == (3, 96, 96)
        boxes = target["boxes"]
        for box, mask in zip(boxes, target["masks"]):  # each box is tight around its digit's pixels
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
            assert image[0][mask.bool()].min() > 0.29  # the mask covers bright digit pixels
        # digits never overlap
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    # the same seed writes the same pixels
    again = write_digits_coco(
        str(tmp_path / "e"), canvas=96, num_train=12, num_val=6, digits_per_image=(2, 4), digit_size=(16, 32), seed=3
    )
    assert np.array_equal(
        np.asarray(Image.open(again / "val" / "000004.png")), np.asarray(Image.open(root / "val" / "000004.png"))
    )


def test_validation_alone_reads_only_the_validation_file(tmp_path):
    root = write_tiny_coco(tmp_path / "coco")
    (root / "annotations" / "train.json").unlink()  # validate / test need no training annotations
    dm = _module(root, masks=True)
    dm.setup("validate")
    assert dm.train_set is None and dm.num_classes == 2 and dm.val_set.ids == [1, 2, 3]
    assert dm.val_set[1][1]["labels"].tolist() == [2, 1]  # the same label space as training's


def _damaged(tmp_path, change):
    root = write_tiny_coco(tmp_path / "coco")
    for split in ("train", "val"):
        path = root / "annotations" / f"{split}.json"
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
    return root


def _set_ann(ann_id, **fields):
    def change(data):
        next(a for a in data["annotations"] if a["id"] == ann_id).update(fields)

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (_set_ann(1, bbox="10,5,20,10"), "annotation 1 has a bbox that is not a list of numbers: '10,5,20,10'"),
        (_set_ann(1, image_id=99), "annotation 1 refers to image 99, which the file does not list"),
        (lambda d: d["images"][0].pop("width"), "image 1 has no 'width'"),
        (lambda d: d["annotations"].clear(), "no usable image (3 listed, 0 annotations skipped)"),
        (
            lambda d: d["categories"].append({"id": 3, "name": "three again"}),
            "lists category id 3 twice; every category needs its own id",
        ),
        (
            lambda d: d["images"].append({"id": 2, "file_name": "1.png", "width": 60, "height": 40}),
            "lists image id 2 twice; every image needs its own id",
        ),
        (lambda d: d["annotations"][0].pop("category_id"), "annotation 1 has no 'category_id'"),
        (lambda d: d["annotations"][0].pop("image_id"), "annotation 1 has no 'image_id'"),
    ],
)
def test_malformed_annotations_are_one_line_errors_at_load(tmp_path, change, message):
    """Before: a string bbox failed mid-epoch with "'>' not supported", a missing width with
    KeyError, annotations for unlisted images were dropped silently, and no usable image ended in
    'num_samples should be a positive integer value'."""
    root = _damaged(tmp_path, change)
    with pytest.raises(ValueError) as err:
        _module(root, masks=True).setup("fit")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unusable_polygons_are_skipped_and_counted(tmp_path, caplog):
    """Before: an empty polygon [[]] gave pycocotools' 'input type is not supported' traceback and a
    4-value polygon 'Argument 'bb' has incorrect type' mid-epoch. COCO's tools skip such polygons."""

    def change(data):
        data["annotations"][0]["segmentation"] = [[]]
        data["annotations"][1]["segmentation"] = [[5, 10, 25, 30]]
        data["annotations"][2]["segmentation"] = [[30, 35, 48, 35, 48, 45], [1, 2]]  # one usable polygon kept

    root = _damaged(tmp_path, change)
    data = _module(root, masks=True)
    with caplog.at_level("WARNING"):
        data.setup("fit")
    assert "without a usable mask" in caplog.text
    for i in range(len(data.train_set)):
        _, target = data.train_set[i]
        assert target["masks"].shape[0] == target["boxes"].shape[0]


def test_non_finite_boxes_are_skipped_and_counted(tmp_path, caplog):
    """Before: a NaN or infinite coordinate passed the degenerate-box filter."""

    def change(data):
        data["annotations"][1]["bbox"] = [5, float("nan"), 20, 20]
        data["annotations"][2]["bbox"] = [30, 35, float("inf"), 10]

    root = _damaged(tmp_path, change)
    data = _module(root)
    with caplog.at_level("WARNING"):
        data.setup("fit")
    assert data.train_set.skipped["with a non-finite box"] == 2 and "2 with a non-finite box" in caplog.text
    for i in range(len(data.train_set)):
        assert torch.isfinite(data.train_set[i][1]["boxes"]).all()


def test_an_image_whose_size_differs_from_the_json_is_named_at_first_read(tmp_path):
    """Before: it loaded, with masks and box clipping in the JSON's size."""
    root = write_tiny_coco(tmp_path / "coco")
    Image.fromarray(np.zeros((41, 60, 3), dtype=np.uint8)).save(root / "images" / "1.png")  # JSON: 60 x 40
    data = _module(root, masks=True)
    data.setup("fit")
    index = data.train_set.ids.index(1)
    with pytest.raises(ValueError) as err:
        data.train_set[index]
    assert str(root / "images" / "1.png") in str(err.value) and "60 x 41 pixels" in str(err.value)
    assert "60 x 40" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("flip_prob", 1.5, "data.flip_prob must be in [0, 1], got 1.5"),
        ("aspect_ratio_group_factor", -2, "data.aspect_ratio_group_factor must be -1 (off) or >= 0, got -2"),
    ],
)
def test_coco_module_options_are_checked_when_built(option, value, message):
    with pytest.raises(ValueError) as err:
        COCODataModule(**{option: value})
    assert str(err.value) == message


def test_a_bool_in_a_bbox_or_an_image_size_is_not_a_number(tmp_path):
    """Before: [true, 5, 20, 20] passed the number check (a JSON true is a Python bool, an int)."""
    (tmp_path / "images").mkdir()
    base = {
        "images": [{"id": 1, "width": 32, "height": 32, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "x"}],
    }
    for annotations, images, message in (
        ([{"id": 7, "image_id": 1, "category_id": 1, "bbox": [True, 5, 20, 20], "area": 1, "iscrowd": 0}], None,
         "annotation 7 has a bbox that is not a list of numbers"),
        ([], [{"id": 1, "width": True, "height": 32, "file_name": "a.png"}], "image 1 has a width or height that is not a positive number"),
    ):  # fmt: skip
        data = {**base, "annotations": annotations, **({"images": images} if images else {})}
        (tmp_path / "ann.json").write_text(json.dumps(data))
        with pytest.raises(ValueError, match=message):
            COCODetection(str(tmp_path / "images"), str(tmp_path / "ann.json"))
