"""LVISDetection: an LVIS v1 split as torchvision detection targets; its bad input."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import lvis
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from gumbel_analysis.data.dataset import LVISDetection, collate, image_path
from gumbel_analysis.data.sampling import build_train_sampler
from gumbel_analysis.data.synthetic import SyntheticSpec, make_synthetic
from gumbel_analysis.errors import InputError
from gumbel_analysis.evaluation import compat

SPEC = SyntheticSpec(classes=7, train_images=30, val_images=10, size=48, seed=5)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data") / "d", SPEC, progress=False)


def raw(root: Path, split: str = "train") -> dict:
    return json.loads((root / "annotations" / f"lvis_v1_{split}.json").read_text())


def dataset(root: Path, split: str = "train", **kwargs) -> LVISDetection:
    ann = root / "annotations" / f"lvis_v1_{split}.json"
    return LVISDetection(ann, root / "images", train=split == "train", **kwargs)


def test_items_have_torchvision_detection_format(root):
    ds = dataset(root, hflip_prob=0.0)
    assert len(ds) == SPEC.train_images
    for i in range(len(ds)):
        image, target = ds[i]
        k = len(target["labels"])
        assert image.dtype == torch.float32 and image.shape == (3, SPEC.size, SPEC.size)
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (k, 4)
        assert target["labels"].dtype == torch.int64 and k >= 1
        assert int(target["labels"].min()) >= 1 and int(target["labels"].max()) <= SPEC.classes
        assert target["masks"].dtype == torch.uint8
        assert target["masks"].shape == (k, SPEC.size, SPEC.size)
        assert target["area"].dtype == torch.float32 and target["iscrowd"].dtype == torch.int64
        assert target["image_id"] == ds.image_ids[i]
        assert torch.all(target["boxes"][:, 2:] > target["boxes"][:, :2])


def test_items_match_the_annotation_file(root):
    data = raw(root)
    ds = dataset(root, hflip_prob=0.0)
    cat_ids = sorted(c["id"] for c in data["categories"])
    assert ds.category_ids == cat_ids
    for i in (0, 7, len(ds) - 1):
        _, target = ds[i]
        anns = sorted(
            (a for a in data["annotations"] if a["image_id"] == ds.image_ids[i]),
            key=lambda a: a["id"],
        )
        assert target["labels"].tolist() == [cat_ids.index(a["category_id"]) + 1 for a in anns]
        for box, mask, ann in zip(target["boxes"], target["masks"], anns, strict=True):
            x, y, w, h = ann["bbox"]
            assert box.tolist() == pytest.approx([x, y, x + w, y + h], abs=1e-4)
            ys, xs = np.nonzero(mask.numpy())
            # the mask lies within its box (rasterisation may stop a pixel short of it)
            assert xs.min() >= x - 1 and xs.max() <= x + w + 1
            assert ys.min() >= y - 1 and ys.max() <= y + h + 1
            assert abs(mask.sum().item() - ann["area"]) <= 0.02 * ann["area"] + 2


def test_horizontal_flip_moves_image_masks_and_boxes_together(root):
    plain, flipped = dataset(root, hflip_prob=0.0), dataset(root, hflip_prob=1.0)
    image, target = plain[3]
    image_f, target_f = flipped[3]
    assert torch.equal(image_f, image.flip(-1))
    assert torch.equal(target_f["masks"], target["masks"].flip(-1))
    w = SPEC.size
    expected = torch.stack(
        [w - target["boxes"][:, 2], target["boxes"][:, 1], w - target["boxes"][:, 0]], 1
    )
    assert torch.allclose(target_f["boxes"][:, [0, 1, 2]], expected)
    assert torch.equal(target_f["labels"], target["labels"])
    assert dataset(root).hflip_prob == 0.5 and dataset(root, "val").hflip_prob == 0.0


def test_metadata_comes_from_the_file(root):
    data = raw(root)
    ds = dataset(root)
    cats = sorted(data["categories"], key=lambda c: c["id"])
    assert [c["id"] for c in ds.categories] == [c["id"] for c in cats]
    assert ds.frequency_groups == [c["frequency"] for c in cats]
    expected = np.array([c["image_count"] for c in cats]) / len(data["images"])
    assert np.allclose(ds.class_frequency, expected)
    labels = ds.image_categories()
    for i in range(len(ds)):
        assert labels[i] == set(ds[i][1]["labels"].tolist())


def test_collate_and_a_data_loader_with_rfs(root):
    ds = dataset(root)
    sampler = build_train_sampler(ds, "rfs", seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, collate_fn=collate)
    images, targets = next(iter(loader))
    assert len(images) == len(targets) == 4
    assert all(isinstance(t, dict) and "masks" in t for t in targets)
    assert collate([]) == ([], [])


def test_evaluation_rewriting_segmentations_does_not_change_the_items(root):
    ds = dataset(root, "val")
    before = ds[0][1]["masks"].clone()
    compat.patch_lvis_numpy()
    gt = compat.load_lvis(ds.data)  # shares the dicts; LVISEval turns polygons into RLE
    results = [dict(a, score=1.0) for a in copy.deepcopy(ds.data["annotations"])]
    lvis.LVISEval(gt, results, "segm").evaluate()
    assert isinstance(ds.data["annotations"][0]["segmentation"], dict)
    assert torch.equal(ds[0][1]["masks"], before)


def test_rle_segmentations_give_the_polygon_masks(root, tmp_path):
    data = raw(root, "val")
    polygon_ds = dataset(root, "val")
    for ann in data["annotations"]:
        rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], SPEC.size, SPEC.size))
        ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    path = tmp_path / "rle.json"
    path.write_text(json.dumps(data))
    rle_ds = LVISDetection(path, root / "images", train=False)
    for i in range(3):
        assert torch.equal(rle_ds[i][1]["masks"], polygon_ds[i][1]["masks"])


def test_real_lvis_images_are_found_from_coco_url():
    image = {"id": 1, "coco_url": "http://images.cocodataset.org/val2017/000000000139.jpg"}
    assert image_path(Path("/coco"), image) == Path("/coco/val2017/000000000139.jpg")
    with pytest.raises(InputError, match="neither"):
        image_path(Path("/coco"), {"id": 2})


# --- bad input ----------------------------------------------------------------------------------


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_missing_image_file_is_named(root, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(root / "images", images)
    victim = raw(root)["images"][4]["file_name"]
    (images / victim).unlink()
    with pytest.raises(InputError, match=r"image file not found: .*" + victim.split("/")[-1]):
        LVISDetection(root / "annotations" / "lvis_v1_train.json", images, train=True)


def test_unknown_category_id_is_refused(root, tmp_path):
    data = raw(root)
    data["annotations"][2]["category_id"] = 999
    with pytest.raises(InputError, match="unknown category id 999"):
        LVISDetection(write(tmp_path, data), root / "images", train=True)


@pytest.mark.parametrize(
    "content",
    [
        [1, 2, 3],
        {"images": [], "categories": []},
        {"info": "coco?", "annotations": {}, "images": [], "categories": []},
    ],
)
def test_a_json_that_is_not_lvis_is_refused(root, tmp_path, content):
    with pytest.raises(InputError, match="not LVIS"):
        LVISDetection(write(tmp_path, content), root / "images", train=True)


def test_a_truncated_file_is_refused(root, tmp_path):
    path = tmp_path / "cut.json"
    path.write_text((root / "annotations" / "lvis_v1_val.json").read_text()[:500])
    with pytest.raises(InputError, match="not valid JSON"):
        LVISDetection(path, root / "images", train=False)


@pytest.mark.parametrize(
    ("emptied", "message"), [("images", "no images"), ("annotations", "no annotations")]
)
def test_an_empty_dataset_is_refused(root, tmp_path, emptied, message):
    data = raw(root)
    data[emptied] = []
    if emptied == "images":
        data["annotations"] = []
    with pytest.raises(InputError, match=message):
        LVISDetection(write(tmp_path, data), root / "images", train=True)


def test_bad_flip_probability_is_refused(root):
    with pytest.raises(InputError, match="flip probability"):
        dataset(root, hflip_prob=1.5)
