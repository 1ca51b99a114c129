"""The synthetic long-tailed LVIS dataset and ``gumbel make-data``."""

from __future__ import annotations

import colorsys
import copy
import json
from collections import Counter, defaultdict
from pathlib import Path

import lvis
import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

from gumbel_analysis.cli.app import app
from gumbel_analysis.data import lvis_io, synthetic
from gumbel_analysis.data.synthetic import (
    HUES,
    MAX_MEAN_CLASSES,
    NEG_PER_IMAGE,
    VAL_MIN_IMAGES,
    SyntheticSpec,
    class_appearance,
    ensure_synthetic,
    make_synthetic,
    train_image_counts,
    val_image_counts,
)
from gumbel_analysis.errors import InputError
from gumbel_analysis.evaluation import compat

SMALL = SyntheticSpec(classes=8, train_images=40, val_images=12, size=64, seed=3)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("synth") / "data", SMALL, progress=False)


def load(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"lvis_v1_{split}.json").read_text())


def lvis_rule(image_count: int, train_images: int) -> str:
    """The documented thresholds: LVIS's 10 and 100 images per 1000 training images."""
    rare = max(1, train_images // 100)
    common = max(rare + 1, train_images // 10)
    return "r" if image_count <= rare else "c" if image_count <= common else "f"


def decode(ann: dict, h: int, w: int) -> np.ndarray:
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w)))


def test_round_trip_through_official_lvis_api(small):
    for split, n_images in (("train", SMALL.train_images), ("val", SMALL.val_images)):
        api = lvis.LVIS(str(small / "annotations" / f"lvis_v1_{split}.json"))
        assert len(api.get_img_ids()) == n_images
        assert sorted(api.get_cat_ids()) == list(range(1, SMALL.classes + 1))
        for img in api.load_imgs(api.get_img_ids()):
            with Image.open(small / "images" / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"]) == (SMALL.size, SMALL.size)
                assert im.mode == "RGB"
            assert api.get_ann_ids(img_ids=[img["id"]]), "every image shows an object"
    train, val = load(small, "train"), load(small, "val")
    assert train["categories"] == val["categories"]
    assert not {i["id"] for i in train["images"]} & {i["id"] for i in val["images"]}


def test_counts_are_those_of_the_training_split(small):
    train = load(small, "train")
    images, instances = defaultdict(set), Counter()
    for ann in train["annotations"]:
        images[ann["category_id"]].add(ann["image_id"])
        instances[ann["category_id"]] += 1
    for split in ("train", "val"):
        for cat in load(small, split)["categories"]:
            assert cat["image_count"] == len(images[cat["id"]]) >= 1
            assert cat["instance_count"] == instances[cat["id"]]
    per_image = Counter(a["image_id"] for a in train["annotations"])
    assert min(per_image.values()) >= 1 and max(per_image.values()) <= synthetic.MAX_OBJECTS


def test_groups_follow_the_documented_thresholds(small):
    train = load(small, "train")
    thresholds = train["info"]["frequency_thresholds"]
    assert thresholds["rare_max_images"] == max(1, SMALL.train_images // 100)
    groups = [c["frequency"] for c in train["categories"]]
    for cat in train["categories"]:
        assert cat["frequency"] == lvis_rule(cat["image_count"], SMALL.train_images)
    assert set(groups) == {"r", "c", "f"}


def test_every_class_is_in_the_validation_split(small):
    val = load(small, "val")
    images = defaultdict(set)
    for ann in val["annotations"]:
        images[ann["category_id"]].add(ann["image_id"])
    assert all(len(images[k]) >= VAL_MIN_IMAGES for k in range(1, SMALL.classes + 1))


def test_negative_categories_are_absent_from_their_image(small):
    for split in ("train", "val"):
        data = load(small, split)
        present = defaultdict(set)
        for ann in data["annotations"]:
            present[ann["image_id"]].add(ann["category_id"])
        for img in data["images"]:
            assert len(img["neg_category_ids"]) == NEG_PER_IMAGE
            assert not set(img["neg_category_ids"]) & present[img["id"]]
            assert set(img["neg_category_ids"]) <= set(range(1, SMALL.classes + 1))
            assert img["not_exhaustive_category_ids"] == []


def test_ground_truth_as_results_scores_ap_one_and_a_false_positive_lowers_it(small):
    compat.patch_lvis_numpy()
    gt = lvis.LVIS(str(small / "annotations" / "lvis_v1_val.json"))
    results = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "segmentation": a["segmentation"],
            "score": 0.9,
        }
        for a in gt.dataset["annotations"]
    ]
    for iou_type in ("segm", "bbox"):
        ev = lvis.LVISEval(gt, copy.deepcopy(results), iou_type)
        ev.run()
        scores = ev.get_results()
        for name in ("AP", "APr", "APc", "APf"):
            assert scores[name] == pytest.approx(1.0), (iou_type, name)
    # a confident detection of a category listed as absent must count as a false positive
    img = gt.dataset["images"][0]
    wrong = img["neg_category_ids"][0]
    fp = {"image_id": img["id"], "category_id": wrong, "bbox": [0, 0, 8, 8], "score": 1.0}
    ev = lvis.LVISEval(gt, [*copy.deepcopy(results), fp], "bbox")
    ev.run()
    assert ev.get_results()["AP"] < 1.0


def test_masks_cover_the_drawn_objects_and_do_not_overlap(small):
    train = load(small, "train")
    anns = defaultdict(list)
    for ann in train["annotations"]:
        anns[ann["image_id"]].append(ann)
    checked = 0
    for img in train["images"][:15]:
        with Image.open(small / "images" / img["file_name"]) as im:
            rgb = np.asarray(im, dtype=np.float64) / 255.0
        hsv = np.array([colorsys.rgb_to_hsv(*p) for p in rgb.reshape(-1, 3)]).reshape(rgb.shape)
        masks = [decode(a, img["height"], img["width"]) for a in anns[img["id"]]]
        assert np.sum(masks, axis=0).max() <= 1, "instance masks overlap"
        for ann, mask in zip(anns[img["id"]], masks, strict=True):
            inside = ndimage.binary_erosion(mask, iterations=1)
            if inside.sum() < 5:
                continue
            hue = HUES[class_appearance(ann["category_id"] - 1)[1]]
            measured = np.rad2deg(np.angle(np.exp(1j * 2 * np.pi * hsv[..., 0][inside]).mean()))
            assert abs((measured - hue + 180) % 360 - 180) < 15, ann
            assert hsv[..., 1][inside].mean() > 0.5  # objects are saturated
            checked += 1
        anywhere = ndimage.binary_dilation(np.sum(masks, axis=0) > 0, iterations=2)
        assert hsv[..., 1][~anywhere].mean() < 0.3  # the background is greyish
    assert checked >= 15


def test_same_spec_gives_identical_files_and_another_seed_does_not(small, tmp_path):
    again = make_synthetic(tmp_path / "again", SMALL, progress=False)
    files = sorted(p.relative_to(small) for p in small.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for f in files:
        assert (small / f).read_bytes() == (again / f).read_bytes(), f
    other = SyntheticSpec(**{**SMALL.__dict__, "seed": SMALL.seed + 1})
    changed = make_synthetic(tmp_path / "other", other, progress=False)
    assert load(changed, "train")["annotations"] != load(small, "train")["annotations"]


def test_key_is_stable_and_names_every_parameter():
    base = SyntheticSpec()
    assert base.key() == SyntheticSpec().key()
    variants = [
        SyntheticSpec(classes=21),
        SyntheticSpec(train_images=601),
        SyntheticSpec(val_images=151),
        SyntheticSpec(size=96),
        SyntheticSpec(seed=1),
        SyntheticSpec(heldout=1),
    ]
    keys = {base.key(), *(v.key() for v in variants)}
    assert len(keys) == 7
    # the cached benchmark's name from before held-out splits existed, unchanged
    from gumbel_analysis.experiments.material import BENCHMARK

    assert BENCHMARK.key() == "synthetic-c96-n600-v600-s128-seed0-0a508b87"
    assert SyntheticSpec(heldout=2).key().startswith("synthetic-c20-n600-v150-s128-seed0-h2-")


def test_a_heldout_split_keeps_the_training_split_and_draws_other_val_images(small, tmp_path):
    spec = SyntheticSpec(**{**SMALL.__dict__, "heldout": 1})
    heldout = make_synthetic(tmp_path / "heldout", spec, progress=False)
    ours, theirs = load(heldout, "train"), load(small, "train")
    assert ours["info"]["spec"] == {**theirs["info"]["spec"], "heldout": 1}
    for part in ("images", "annotations", "categories"):
        assert ours[part] == theirs[part], part
    for name in sorted(p.name for p in (small / "images" / "train").iterdir()):
        part = f"images/train/{name}"
        assert (heldout / part).read_bytes() == (small / part).read_bytes()
    ours, theirs = load(heldout, "val"), load(small, "val")
    assert len(ours["images"]) == len(theirs["images"])
    pixels = [(heldout / "images" / im["file_name"]).read_bytes() for im in ours["images"]]
    assert not set(pixels) & {
        (small / "images" / im["file_name"]).read_bytes() for im in theirs["images"]
    }
    assert {a["category_id"] for a in ours["annotations"]} == set(range(1, SMALL.classes + 1))
    with pytest.raises(InputError, match="--heldout must be non-negative"):
        SyntheticSpec(heldout=-1).check()


@pytest.mark.parametrize("classes", [5, 10, 20, 30])
@pytest.mark.parametrize("images", [100, 300, 600, 1000])
def test_class_counts_are_long_tailed_with_all_three_groups(classes, images):
    counts = train_image_counts(classes, images)
    assert len(counts) == classes
    assert np.all(np.diff(counts) <= 0)
    assert counts[-1] == 1, "the rarest class is in one image"
    assert images <= counts.sum() <= MAX_MEAN_CLASSES * images
    assert {lvis_rule(int(n), images) for n in counts} == {"r", "c", "f"}
    # geometric fall with rank: log counts evenly spaced from the head to 1 (within rounding)
    expected = np.log(counts[0]) * (1 - np.arange(classes) / (classes - 1))
    assert np.allclose(np.log(counts), expected, atol=np.log(1.5) + 1e-9)


def test_default_spec_has_really_rare_classes_and_a_full_validation_split():
    spec = SyntheticSpec()
    counts = train_image_counts(spec.classes, spec.train_images)
    rare = [int(n) for n in counts if lvis_rule(int(n), spec.train_images) == "r"]
    assert len(rare) >= 3 and max(rare) <= 6
    val = val_image_counts(counts, spec.train_images, spec.val_images)
    assert val.min() >= VAL_MIN_IMAGES and val.sum() >= spec.val_images


def test_default_dataset_is_made_and_loads(tmp_path):
    spec = SyntheticSpec()
    root = make_synthetic(tmp_path / "default", spec, progress=False)
    train = lvis_io.load_lvis_json(root / "annotations" / "lvis_v1_train.json")
    assert len(train["images"]) == spec.train_images
    assert set(lvis_io.frequency_groups(train)) == {"r", "c", "f"}
    assert len(list((root / "images" / "val").iterdir())) == spec.val_images


@pytest.mark.parametrize(
    "spec",
    [
        SyntheticSpec(classes=2),
        SyntheticSpec(classes=500),
        SyntheticSpec(size=16),
        SyntheticSpec(train_images=5),
        SyntheticSpec(val_images=0),
        SyntheticSpec(classes=150, train_images=300),
        SyntheticSpec(classes=20, val_images=4),
    ],
)
def test_impossible_specs_are_refused_before_writing(spec, tmp_path):
    with pytest.raises(InputError):
        make_synthetic(tmp_path / "out", spec, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_refused_unless_overwrite(small, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        make_synthetic(out, SMALL, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    make_synthetic(out, SMALL, progress=False, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert load(out, "val") == load(small, "val")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert make_synthetic(empty, SMALL, progress=False) == empty
    assert load(empty, "val") == load(small, "val")


def test_a_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def broken(*args):
        calls.append(args)
        if len(calls) > 5:
            raise RuntimeError("disk on fire")
        return render(*args)

    render = synthetic._render
    monkeypatch.setattr(synthetic, "_render", broken)
    with pytest.raises(RuntimeError):
        make_synthetic(tmp_path / "out", SMALL, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_ensure_synthetic_makes_once_then_reuses(tmp_path, monkeypatch):
    spec = SyntheticSpec(classes=6, train_images=30, val_images=8, size=48)
    first = ensure_synthetic(tmp_path / "cache", spec)
    assert first == tmp_path / "cache" / spec.key()
    before = load(first, "train")

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt a cached dataset")

    monkeypatch.setattr(synthetic, "make_synthetic", no_rebuild)
    assert ensure_synthetic(tmp_path / "cache", spec) == first
    assert load(first, "train") == before


def test_default_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GUMBEL_CACHE", str(tmp_path / "g"))
    assert synthetic.default_cache_root() == tmp_path / "g"
    monkeypatch.delenv("GUMBEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert synthetic.default_cache_root() == tmp_path / "x" / "gumbel-analysis"


ARGS = [
    "--classes",
    "8",
    "--train-images",
    "40",
    "--val-images",
    "12",
    "--size",
    "64",
    "--seed",
    "3",
]


def test_make_data_command_writes_the_dataset_and_reports_groups(small, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["make-data", str(out), *ARGS, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert load(out, "train") == load(small, "train")  # the same spec as the library's
    train, val = load(out, "train"), load(out, "val")
    group = {c["id"]: c["frequency"] for c in train["categories"]}
    for g in ("r", "c", "f"):
        row = report["groups"][g]
        assert row["classes"] == sum(v == g for v in group.values())
        assert row["train_instances"] == sum(
            group[a["category_id"]] == g for a in train["annotations"]
        )
        assert row["val_images"] == len(
            {a["image_id"] for a in val["annotations"] if group[a["category_id"]] == g}
        )
    assert report["total"]["train_images"] == 40

    table = runner.invoke(app, ["make-data", str(tmp_path / "t"), *ARGS])
    assert table.exit_code == 0
    assert "rare (r)" in table.stdout and "frequent" in table.stdout


def test_make_data_into_a_non_empty_folder_fails_with_one_line(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "x").write_text("x")
    result = CliRunner().invoke(app, ["make-data", str(out), *ARGS])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "not empty" in lines[0]
    assert "Traceback" not in result.output
    assert [p.name for p in out.iterdir()] == ["x"]


@pytest.mark.parametrize(
    "extra",
    [["--classes", "1"], ["--size", "8"], ["--classes", "150", "--train-images", "40"]],
)
def test_make_data_bad_values_fail_with_one_line(tmp_path, extra):
    result = CliRunner().invoke(app, ["make-data", str(tmp_path / "out"), *ARGS, *extra])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []
