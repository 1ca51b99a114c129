"""The one results reader: each accepted and refused variant, the same message for eval and
kl-dist."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from gumbel_analysis.cli.app import app
from gumbel_analysis.errors import InputError
from gumbel_analysis.evaluation import results as reader
from gumbel_analysis.evaluation.results import read_results

RLE = {"size": [4, 5], "counts": "04N0000"}
runner = CliRunner()


def write(tmp_path, content, name="r.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize(
    ("entries", "check"),
    [
        ([{"image_id": 8.0, "category_id": 2.0, "score": 0.5, "bbox": [1, 2, 3, 4]}], "ids"),
        ([{"image_id": 8, "category_id": 2, "score": 1, "bbox": [1, 2, 3, 4], "extra": 1}], "ids"),
        (
            [{"image_id": 8, "category_id": 2, "score": 0.5, "bbox": [1, 2, 3, 4],
              "meta": {"score": "x", "image_id": [1, {"a": None}]}}],
            "ids",
        ),
        ([{"image_id": 8, "category_id": 2, "score": 0.5, "bbox": [1, 2, 3, 4]}], "bbox"),
        ([{"image_id": 8, "category_id": 2, "score": 0.5, "segmentation": RLE}], "segm"),
        (
            [{"image_id": 8, "category_id": 2, "score": 0.5,
              "segmentation": {"size": [4, 5], "counts": [3, 17]}}],
            "segm",
        ),
    ],
)  # fmt: skip
@pytest.mark.parametrize("indent", [None, 2])
def test_accepted_variants(tmp_path, entries, check, indent):
    path = write(tmp_path, json.dumps(entries, indent=indent))
    d = read_results(path)
    assert d.image_id.tolist() == [8] and d.category_id.tolist() == [2]
    assert d.image_id.dtype == np.int64
    if check == "bbox":
        assert d.bbox.tolist() == [[1, 2, 3, 4]] and d.counts is None
    if check == "segm":
        assert d.bbox is None and d.has_mask.tolist() == [True]
        assert d.rle(0)["size"] == [4, 5]


def test_empty_list_is_no_detections(tmp_path):
    for content in ("[]", "[\n  ]\n"):
        d = read_results(write(tmp_path, content))
        assert len(d) == 0


def test_pieces_give_the_whole_files_columns(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    entries = [
        {"image_id": int(i), "category_id": int(c), "score": float(s), "bbox": [1, 2, 3, 4],
         "segmentation": RLE, "x": {"y": "}, {"}}
        for i, c, s in zip(rng.integers(1, 99, 300), rng.integers(1, 9, 300), rng.random(300),
                           strict=True)
    ]  # fmt: skip
    path = write(tmp_path, json.dumps(entries, indent=1))
    whole = read_results(path)
    monkeypatch.setattr(reader, "_PIECE_BYTES", 200)
    assert len(reader._piece_ranges(path)) > 20
    pieces = read_results(path)
    for name in ("image_id", "category_id", "score", "bbox", "counts", "offsets", "mask_size"):
        assert np.array_equal(getattr(whole, name), getattr(pieces, name)), name


BAD = {
    "nan": ('[{"image_id": 1, "category_id": 2, "score": NaN, "bbox": [1,2,3,4]}]', "score nan"),
    "inf": ('[{"image_id": 1, "category_id": 2, "score": Infinity, "bbox": [1,2,3,4]}]',
            "score inf"),
    "big": ('[{"image_id": 1, "category_id": 2, "score": 1e999, "bbox": [1,2,3,4]}]',
            "score inf"),
    "negative": ('[{"image_id": 1, "category_id": 2, "score": -0.1, "bbox": [1,2,3,4]}]',
                 "score -0.1"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_scores_get_the_same_message_in_eval_and_kl_dist(tmp_path, case):
    content, message = BAD[case]
    path = write(tmp_path, content)
    with pytest.raises(InputError, match=f"detection 0 has {message}; a score is a finite"):
        read_results(path)
    gt = {
        "images": [{"id": 1, "height": 4, "width": 5}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 1, 2, 2],
                         "area": 4, "segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]]}],
        "categories": [{"id": 2, "name": "a", "frequency": "f", "image_count": 1,
                        "instance_count": 1}],
    }  # fmt: skip
    gt_path = write(tmp_path, gt, "gt.json")
    lines = []
    for command in ("eval", "kl-dist"):
        result = runner.invoke(app, [command, str(path), "--gt", str(gt_path)])
        assert result.exit_code == 2, (command, result.output)
        assert len(result.stderr.strip().splitlines()) == 1
        lines.append(result.stderr.strip())
    assert lines[0] == lines[1] and f"detection 0 has {message}" in lines[0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"image_id": 1.5, "category_id": 2, "score": 0.5, "bbox": [1,2,3,4]}]', "image_id 1.5"),
        ('[{"image_id": true, "category_id": 2, "score": 0.5, "bbox": [1,2,3,4]}]',
         "image_id True"),
        ('[{"image_id": 1, "category_id": 2, "score": 0.5}]', "neither a bbox nor"),
        ('[{"image_id": 1, "category_id": 2, "score": 0.5, "bbox": [1,2]}]', "has bbox [1"),
        ('[{"image_id": 1, "category_id": 2, "score": 0.5, "segmentation": [[1,2,3]]}]',
         "not an RLE"),
        ('[{"image_id": 1, "category_id": 2, "score": "0.5", "bbox": [1,2,3,4]}]', "score '0.5'"),
        ('[{"image_id": 1, "category_id": 2, "score": 0.5, "bbox": [1,2,3,4]}, 3]',
         "detection 1 is not an object"),
        ('{"annotations": []}', "not a list of detections"),
        ('[{"image_id": 1, "categ', "not valid JSON"),
        ("", "not valid JSON"),
    ],
)  # fmt: skip
def test_refused_variants_name_the_entry(tmp_path, content, message):
    with pytest.raises(InputError, match="results file .*" + __import__("re").escape(message)):
        read_results(write(tmp_path, content))
