"""``gumbel kl-dist``: per-image KL against scipy on hand-built LVIS files, the parser, the CLI."""

import json
import math

import numpy as np
import pytest
from scipy.stats import entropy
from typer.testing import CliRunner

from gumbel_analysis.analysis import kl as klmod
from gumbel_analysis.analysis import kl_plot
from gumbel_analysis.analysis.kl import (
    KLOptions,
    choose_rows,
    compare_runs,
    ground_truth_from_dict,
    kl_divergence,
    select_detections,
    smoothed,
)
from gumbel_analysis.cli.app import app
from gumbel_analysis.data.lvis_io import load_lvis_json
from gumbel_analysis.errors import InputError
from gumbel_analysis.evaluation import results as lvis_results

runner = CliRunner()

# Categories 1, 2, 3, 5 (ids not contiguous); groups f, c, r, f.
CATEGORIES = [
    {"id": 1, "name": "person", "frequency": "f", "image_count": 900},
    {"id": 2, "name": "cup", "frequency": "c", "image_count": 50},
    {"id": 3, "name": "yak", "frequency": "r", "image_count": 4},
    {"id": 5, "name": "car", "frequency": "f", "image_count": 900},
]
CAT_IDS = [1, 2, 3, 5]
# Instances per image; image 40 has none (no target), image 50 has one.
GT_INSTANCES = {10: [1, 1, 2], 20: [3], 30: [5, 5, 5, 1], 40: [], 50: [2]}


def make_gt(instances=GT_INSTANCES, categories=CATEGORIES) -> dict:
    images = [{"id": i, "height": 40, "width": 60, "file_name": f"{i}.png"} for i in instances]
    anns = []
    for image_id, cats in instances.items():
        for c in cats:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": c,
                    "bbox": [5.0, 5.0, 20.0, 10.0],
                    "area": 200.0,
                    "segmentation": [[5, 5, 25, 5, 25, 15, 5, 15]],
                }
            )
    return {"images": images, "annotations": anns, "categories": [dict(c) for c in categories]}


# Each model: (image_id, category_id, score); includes a detection on image 40 (no target).
RUNS = {
    "good": [
        (10, 1, 0.9),
        (10, 1, 0.8),
        (10, 2, 0.7),
        (10, 5, 0.1),
        (20, 3, 0.6),
        (30, 5, 0.9),
        (30, 1, 0.3),
        (40, 1, 0.5),
        (50, 2, 0.4),
    ],
    "bad": [(10, 5, 0.9), (20, 1, 0.8), (20, 3, 0.05), (30, 2, 0.7), (40, 2, 0.2)],
}


def write_results(path, triples, kind="bbox", **dump):
    out = []
    for image_id, category_id, score in triples:
        entry = {"image_id": image_id, "category_id": category_id, "score": score}
        if kind == "bbox":
            entry["bbox"] = [1.5, 2.0, 10.25, 4.0]
        else:
            entry["segmentation"] = {"size": [40, 60], "counts": "PPYo1\\d0;Z`a5_o"}
        out.append(entry)
    path.write_text(json.dumps(out, **dump))
    return path


@pytest.fixture
def files(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(make_gt()))
    runs = [write_results(tmp_path / f"{name}.json", dets) for name, dets in RUNS.items()]
    return gt, runs


def expected_kl(instances, detections, eps, base=math.e, count=False, threshold=0.0, top_k=0):
    """Per image with ground truth, by plain loops and scipy.stats.entropy (which normalises)."""
    kept = [d for d in detections if d[2] >= threshold]
    if top_k:
        by_image = {}
        for d in kept:
            by_image.setdefault(d[0], []).append(d)
        kept = [d for ds in by_image.values() for d in sorted(ds, key=lambda d: -d[2])[:top_k]]
    out = {}
    for image_id, cats in instances.items():
        if not cats:
            continue
        target = [cats.count(c) for c in CAT_IDS]
        mass = [0.0] * len(CAT_IDS)
        for i, c, s in kept:
            if i == image_id:
                mass[CAT_IDS.index(c)] += 1.0 if count else s
        out[image_id] = entropy(target, [m + eps for m in mass], base=base)
    return out


def per_image(comparison, label):
    run = next(r for r in comparison.runs if r.label == label)
    return dict(zip(comparison.gt.row_image_ids.tolist(), run.kl.tolist(), strict=True))


# ----------------------------------------------------------------------------- the divergence


@pytest.mark.parametrize("base", ["e", "2"])
def test_kl_divergence_matches_scipy_entropy_on_random_distributions(base):
    rng = np.random.default_rng(1)
    target = rng.dirichlet(np.full(50, 0.3), size=200)
    target[target < 0.01] = 0.0  # zeros in the target are allowed (0 log 0 = 0)
    target /= target.sum(axis=1, keepdims=True)
    predicted = smoothed(rng.exponential(size=(200, 50)), 1e-6)
    got = kl_divergence(target, predicted, base)
    want = [
        entropy(t, p, base=math.e if base == "e" else 2)
        for t, p in zip(target, predicted, strict=True)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_smoothed_is_normalised_and_positive():
    p = smoothed(np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 1.0]]), 0.5)
    np.testing.assert_allclose(p[0], [1 / 3] * 3)
    np.testing.assert_allclose(p[1], np.array([2.5, 0.5, 1.5]) / 4.5)


# ----------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("eps", [1e-6, 0.1])
def test_per_image_kl_matches_scipy_on_hand_built_images(files, eps):
    gt, runs = files
    comparison = compare_runs(gt, runs, ["good", "bad"], KLOptions(eps=eps), num_images=0)
    assert comparison.gt.row_image_ids.tolist() == [10, 20, 30, 50]  # 40 has no target
    for label in ("good", "bad"):
        want = expected_kl(GT_INSTANCES, RUNS[label], eps)
        got = per_image(comparison, label)
        assert got.keys() == want.keys()
        for image_id in want:
            assert got[image_id] == pytest.approx(want[image_id], rel=1e-12, abs=1e-15)
    good = comparison.runs[0].summary
    values = list(expected_kl(GT_INSTANCES, RUNS["good"], eps).values())
    assert good["kl_mean"] == pytest.approx(np.mean(values), rel=1e-12)
    assert good["kl_median"] == pytest.approx(np.median(values), rel=1e-12)
    assert comparison.closest() == "good"


def test_only_the_prediction_is_smoothed_and_no_detections_gives_uniform(files):
    gt, runs = files
    eps = 0.05
    comparison = compare_runs(gt, runs, ["good", "bad"], KLOptions(eps=eps), num_images=0)
    bad = per_image(comparison, "bad")
    # image 20 holds only category 3: KL = -log p_3 with the unsmoothed target one-hot
    s_total, s3 = 0.8 + 0.05, 0.05
    assert bad[20] == pytest.approx(-math.log((s3 + eps) / (s_total + 4 * eps)), rel=1e-13)
    # image 50 (one cup) has no detection of "bad": uniform prediction, KL = log C - H(target)
    assert bad[50] == pytest.approx(math.log(4), rel=1e-13)
    assert comparison.runs[1].summary["images_without_detections"] == 1
    # 30 with target (3 car, 1 person) vs a prediction on cup only, by hand
    p_cup = (0.7 + eps) / (0.7 + 4 * eps)
    p_other = eps / (0.7 + 4 * eps)
    assert p_cup + 3 * p_other == pytest.approx(1.0)
    want = 0.75 * math.log(0.75 / p_other) + 0.25 * math.log(0.25 / p_other)
    assert bad[30] == pytest.approx(want, rel=1e-13)


def test_bits_are_nats_over_log_2(files):
    gt, runs = files
    nats = compare_runs(gt, runs, None, KLOptions(base="e"), num_images=0)
    bits = compare_runs(gt, runs, None, KLOptions(base="2"), num_images=0)
    for a, b in zip(nats.runs, bits.runs, strict=True):
        np.testing.assert_allclose(b.kl, a.kl / math.log(2), rtol=1e-13)
        assert b.summary["dataset_kl"] == pytest.approx(a.summary["dataset_kl"] / math.log(2))
    assert bits.to_dict()["unit"] == "bits"


@pytest.mark.parametrize(
    ("count", "threshold", "top_k"),
    [(True, 0.0, 0), (False, 0.5, 0), (False, 0.0, 1), (True, 0.2, 2)],
)
def test_count_threshold_and_top_k_match_a_plain_loop(files, count, threshold, top_k):
    gt, runs = files
    options = KLOptions(eps=1e-3, count=count, score_threshold=threshold, top_k=top_k)
    comparison = compare_runs(gt, runs, ["good", "bad"], options, num_images=0)
    for label in ("good", "bad"):
        want = expected_kl(GT_INSTANCES, RUNS[label], 1e-3, count=count, threshold=threshold,
                           top_k=top_k)  # fmt: skip
        got = per_image(comparison, label)
        for image_id in want:
            assert got[image_id] == pytest.approx(want[image_id], rel=1e-12)


def test_top_k_keeps_the_highest_scores_per_image_and_ties_in_file_order():
    gt = ground_truth_from_dict(load_lvis_json_dict(make_gt()))
    det = klmod.match_detections(
        gt,
        np.array([10, 20, 10, 10, 20, 10]),
        np.array([1, 3, 2, 5, 1, 3]),
        np.array([0.2, 0.9, 0.5, 0.5, 0.1, 0.05]),
    )
    kept = select_detections(det, 0.0, 2)
    # image 10: 0.5 (cat 2, earlier) and 0.5 (cat 5) beat 0.2 and 0.05; image 20: both
    assert sorted(
        zip(gt.image_ids[kept.image_index].tolist(), kept.score.tolist(), strict=True)
    ) == [
        (10, 0.5),
        (10, 0.5),
        (20, 0.1),
        (20, 0.9),
    ]
    assert kept.total == 6
    assert len(select_detections(det, 0.5, 0).score) == 3


def test_frequency_groups_and_dataset_histogram_kl(files):
    gt, runs = files
    eps = 1e-6
    comparison = compare_runs(gt, runs, ["good", "bad"], KLOptions(eps=eps), num_images=0)
    groups = {"frequent": 1, "common": 2, "rare": 3}  # a category id of each group ...
    members = {"frequent": [10, 30], "common": [10, 50], "rare": [20]}  # ... images holding one
    assert groups.keys() == members.keys()
    for label in ("good", "bad"):
        want = expected_kl(GT_INSTANCES, RUNS[label], eps)
        summary = next(r for r in comparison.runs if r.label == label).summary
        for name, image_ids in members.items():
            assert summary["kl_by_group"][name]["images"] == len(image_ids)
            assert summary["kl_by_group"][name]["kl_mean"] == pytest.approx(
                np.mean([want[i] for i in image_ids]), rel=1e-12
            )
        target = [sum(cats.count(c) for cats in GT_INSTANCES.values()) for c in CAT_IDS]
        mass = [sum(s for i, c_, s in RUNS[label] if c_ == c and i != 40) for c in CAT_IDS]
        assert summary["dataset_kl"] == pytest.approx(
            entropy(target, [m + eps for m in mass]), rel=1e-12
        )
        assert summary["detections_on_images_without_ground_truth"] == 1


def test_ground_truth_without_frequency_has_no_groups(tmp_path):
    categories = [{k: v for k, v in c.items() if k != "frequency"} for c in CATEGORIES]
    gt = ground_truth_from_dict(load_lvis_json_dict(make_gt(categories=categories)))
    assert gt.frequency is None
    assert gt.group_rows() is None


def test_dense_distributions_of_the_chosen_images_give_the_same_kl(files):
    gt, runs = files
    comparison = compare_runs(gt, runs, ["good", "bad"], KLOptions(eps=0.01), image_ids=[30, 10])
    assert comparison.gt.row_image_ids[comparison.chosen_rows].tolist() == [30, 10]
    for run in comparison.runs:
        for i, row in enumerate(comparison.chosen_rows):
            target = comparison.gt.target_distribution(row)
            assert target.sum() == pytest.approx(1.0)
            assert run.chosen_predicted[i].sum() == pytest.approx(1.0)
            assert kl_divergence(target, run.chosen_predicted[i]) == pytest.approx(
                run.kl[row], rel=1e-12
            )
    chosen = comparison.to_dict()["chosen_images"]
    assert [c["image_id"] for c in chosen] == [30, 10]
    assert chosen[0]["instances"] == 4 and chosen[0]["categories"] == 2


def test_random_choice_is_reproducible_and_only_images_with_targets(files):
    gt_path, _ = files
    gt = ground_truth_from_dict(load_lvis_json(gt_path))
    a, b = choose_rows(gt, None, 3, seed=7), choose_rows(gt, None, 3, seed=7)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 3
    assert set(gt.row_image_ids[a].tolist()) <= {10, 20, 30, 50}
    assert len(choose_rows(gt, None, 20, seed=0)) == 4  # at most the images there are
    with pytest.raises(InputError, match="no ground-truth instances"):
        choose_rows(gt, [40])
    with pytest.raises(InputError, match="not in the ground truth"):
        choose_rows(gt, [99])
    with pytest.raises(InputError, match="--num-images"):
        choose_rows(gt, None, 21)


def load_lvis_json_dict(data: dict) -> dict:
    # what load_lvis_json adds (image_count is given by the tests' categories)
    for im in data["images"]:
        im.setdefault("neg_category_ids", [])
    return data


# ----------------------------------------------------------------------------- the parser


def read_results(path, progress=None):
    """The shared reader's columns, as kl-dist reads them."""
    d = lvis_results.read_results(path, geometry=False, progress=progress)
    return d.image_id, d.category_id, d.score


def random_triples(n, seed=0):
    rng = np.random.default_rng(seed)
    ids = zip(rng.integers(1, 10**6, n), rng.integers(1, 1204, n), rng.random(n), strict=True)
    return [(int(i), int(c), float(s)) for i, c, s in ids]


@pytest.mark.parametrize("kind", ["bbox", "segm"])
@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("chunk", [97, 3000])
def test_parsing_in_pieces_gives_what_json_load_gives(tmp_path, monkeypatch, kind, indent, chunk):
    triples = random_triples(500)
    path = write_results(tmp_path / "r.json", triples, kind, indent=indent)
    monkeypatch.setattr(lvis_results, "_PIECE_BYTES", chunk)  # many pieces, cut anywhere
    assert len(lvis_results._piece_ranges(path)) > 10
    calls = []
    monkeypatch.setattr(
        lvis_results, "_read_whole", lambda p: calls.append(p)
    )  # must not be needed
    done = []
    image_ids, category_ids, scores = read_results(path, done.append)
    assert not calls
    assert image_ids.tolist() == [t[0] for t in triples]
    assert category_ids.tolist() == [t[1] for t in triples]
    assert scores.tolist() == [t[2] for t in triples]
    assert sum(done) == path.stat().st_size


def test_a_bad_detection_in_a_later_piece_is_named_by_its_index_in_the_file(tmp_path, monkeypatch):
    entries = [{"image_id": i, "category_id": 1, "score": 0.5} for i, *_ in random_triples(300)]
    entries[250]["category_id"] = "cup"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(entries))
    monkeypatch.setattr(lvis_results, "_PIECE_BYTES", 1000)
    with pytest.raises(InputError, match=r"detection 250 has category_id 'cup'"):
        read_results(path)


def test_a_separator_inside_a_string_still_parses_right(tmp_path, monkeypatch):
    entries = [
        {"image_id": i, "category_id": 2, "score": 0.5, "note": '}, {"score": 1, "x": [{'}
        for i in range(40)
    ]
    entries[7]["parts"] = [{"a": 1}, {"b": [2, {"c": 3}]}]
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(entries))
    monkeypatch.setattr(lvis_results, "_PIECE_BYTES", 50)
    image_ids, _, scores = read_results(path)
    assert image_ids.tolist() == list(range(40))
    assert scores.tolist() == [0.5] * 40


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "not valid JSON"),
        ('[{"image_id": 1, "category_id": 2, "score": 0.5}, {"image_id": 1, "cat', "truncated"),
        ('{"annotations": []}', "not a list of detections"),
        ('[{"image_id": 1, "category_id": 2, "score": 0.5}, 7]', "detection 1 is not an object"),
        ('[{"image_id": 1, "category_id": 2}]', "detection 0 has no score"),
        ('[{"image_id": 1, "score": 0.5}]', "detection 0 has no category_id"),
        ('[{"image_id": "1", "category_id": 2, "score": 0.5}]', "image_id '1'"),
        ('[{"image_id": 1, "category_id": 2.5, "score": 0.5}]', "category_id 2.5"),
        ('[{"image_id": 1, "category_id": 2, "score": -0.5}]', "score -0.5"),
        ('[{"image_id": 1, "category_id": 2, "score": NaN}]', "score nan"),
        ('[{"image_id": 1, "category_id": 2, "score": null}]', "score None"),
    ],
)
def test_bad_results_files_raise_one_clear_input_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_results(path)


# ----------------------------------------------------------------------------- the command


def test_cli_table_names_each_run_and_the_closest(files):
    gt, runs = files
    result = runner.invoke(
        app, ["kl-dist", "--gt", str(gt), *map(str, runs), "--labels", "Gumbel", "Softmax"]
    )
    assert result.exit_code == 0, result.output
    assert "Gumbel" in result.stdout and "Softmax" in result.stdout
    assert "closest to the target (lowest mean KL): Gumbel" in result.stdout
    assert "rare" in result.stdout and "frequent" in result.stdout


def test_cli_json_has_the_library_numbers(files):
    gt, runs = files
    result = runner.invoke(
        app,
        ["kl-dist", "--gt", str(gt), *map(str, runs), "--images", "20", "10", "--json",
         "--eps", "0.01", "--base", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    library = compare_runs(gt, runs, None, KLOptions(eps=0.01, base="2"), image_ids=[20, 10])
    assert report["unit"] == "bits" and report["images"] == 4 and report["categories"] == 4
    assert report["closest"] == "good"
    assert [r["label"] for r in report["runs"]] == ["good", "bad"]
    for got, run in zip(report["runs"], library.runs, strict=True):
        assert got["kl_mean"] == pytest.approx(run.kl.mean(), rel=1e-12)
        assert got["kl_median"] == pytest.approx(float(np.median(run.kl)), rel=1e-12)
        assert got["detections"] == len(RUNS[run.label])
    assert [c["image_id"] for c in report["chosen_images"]] == [20, 10]
    want = expected_kl(GT_INSTANCES, RUNS["bad"], 0.01, base=2)
    assert report["chosen_images"][0]["kl"]["bad"] == pytest.approx(want[20], rel=1e-12)


def test_cli_plot_writes_the_figure_with_thumbnails(files, tmp_path):
    import matplotlib.image as mpimg

    gt, runs = files
    root = tmp_path / "images"
    root.mkdir()
    mpimg.imsave(root / "10.png", np.full((40, 60, 3), 0.2))
    fig = tmp_path / "fig3.png"
    result = runner.invoke(
        app,
        ["kl-dist", "--gt", str(gt), *map(str, runs), "--plot", str(fig),
         "--image-root", str(root), "--num-images", "3"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fig3")]


def test_thumbnail_blends_the_ground_truth_masks(tmp_path):
    import matplotlib.image as mpimg

    mpimg.imsave(tmp_path / "10.png", np.zeros((40, 60, 3)))
    data = make_gt()
    image = data["images"][0]
    anns = [a for a in data["annotations"] if a["image_id"] == 10]
    picture = kl_plot._thumbnail(tmp_path, image, anns)
    assert picture.shape == (40, 60, 3)
    assert picture[10, 15].sum() > 0  # inside the polygon [5, 25] x [5, 15]
    assert picture[30, 50].sum() == 0  # outside
    assert kl_plot._thumbnail(tmp_path, {**image, "file_name": "missing.png"}, anns) is None


def bad_cli_inputs(tmp_path, gt, runs):
    def results(name, content):
        path = tmp_path / name
        path.write_text(content)
        return str(path)

    good = [str(p) for p in runs]
    not_lvis = results("not_lvis.json", json.dumps({"images": []}))
    return {
        "unknown image": (
            [results("ui.json", '[{"image_id": 777, "category_id": 1, "score": 0.5}]')],
            "image id 777",
        ),
        "unknown category": (
            [results("uc.json", '[{"image_id": 10, "category_id": 4, "score": 0.5}]')],
            "category id 4",
        ),
        "truncated": ([results("trunc.json", '[{"image_id": 10, "categ')], "not valid JSON"),
        "missing results": ([str(tmp_path / "nope.json")], "not found"),
        "gt not lvis": ([*good, "--gt", not_lvis], "is not LVIS"),
        "labels mismatch": ([*good, "--label", "a"], "--label was given 1 times for 2"),
        "base": ([*good, "--base", "10"], "--base"),
        "eps": ([*good, "--eps", "0"], "--eps"),
        "top-k": ([*good, "--top-k", "-1"], "--top-k"),
        "images and num-images": ([*good, "--images", "10", "--num-images", "2"], "either"),
        "image without target": ([*good, "--images", "40"], "no ground-truth instances"),
        "figure suffix": ([*good, "--plot", str(tmp_path / "fig.txt")], "unsupported output"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "unknown image",
        "unknown category",
        "truncated",
        "missing results",
        "gt not lvis",
        "labels mismatch",
        "base",
        "eps",
        "top-k",
        "images and num-images",
        "image without target",
        "figure suffix",
    ],
)
def test_cli_bad_input_exits_2_with_one_line_and_no_figure(files, tmp_path, case):
    gt, runs = files
    args, message = bad_cli_inputs(tmp_path, gt, runs)[case]
    fig = tmp_path / "fig.png"
    gt_args = [] if "--gt" in args else ["--gt", str(gt)]
    plot_args = [] if "--plot" in args else ["--plot", str(fig)]
    result = runner.invoke(app, ["kl-dist", *gt_args, *args, *plot_args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.output
    assert not fig.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fig")]


def test_a_bad_ground_truth_is_an_input_error(tmp_path):
    results = write_results(tmp_path / "r.json", random_triples(400))
    not_lvis = tmp_path / "gt.json"
    not_lvis.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(InputError, match="is not LVIS"):
        compare_runs(not_lvis, [results])


def test_empty_results_are_a_run_without_detections(files, tmp_path):
    gt, _ = files
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    result = runner.invoke(app, ["kl-dist", "--gt", str(gt), str(empty), "--json"])
    assert result.exit_code == 0, result.stderr
    run = json.loads(result.stdout)["runs"][0]
    assert (
        run["detections"] == 0
        and run["images_without_detections"] == json.loads(result.stdout)["images"]
    )
    assert "no detections" in result.stderr and "uniform" in result.stderr


def test_nested_objects_with_a_score_in_extra_keys_are_skipped(tmp_path):
    path = tmp_path / "nested.json"
    path.write_text(
        '[{"image_id": 1, "category_id": 2, "score": 0.5, "x": {"score": 1, "image_id": 1,'
        ' "category_id": 2}}]'
    )
    image_ids, category_ids, scores = read_results(path)
    assert image_ids.tolist() == [1] and category_ids.tolist() == [2] and scores.tolist() == [0.5]


def test_reads_what_gumbel_eval_writes(tmp_path, monkeypatch):
    import torch

    from gumbel_analysis.engine.evaluate import detections_to_results, write_results

    generator = torch.Generator().manual_seed(0)
    outputs = []
    for _ in range(2):
        k = 30
        corners = torch.rand(k, 2, generator=generator) * 20
        outputs.append(
            {
                "boxes": torch.cat([corners, corners + 10], dim=1),
                "labels": torch.randint(1, 5, (k,), generator=generator),
                "scores": torch.rand(k, generator=generator),
                "masks": torch.rand(k, 1, 40, 60, generator=generator),
            }
        )
    results = detections_to_results(outputs, [10, 20], CAT_IDS)
    assert "segmentation" in results[0]
    path = tmp_path / "eval.json"
    write_results(path, results)
    monkeypatch.setattr(lvis_results, "_PIECE_BYTES", 500)
    monkeypatch.setattr(lvis_results, "_read_whole", lambda p: pytest.fail("pieces should parse"))
    image_ids, category_ids, scores = read_results(path)
    assert image_ids.tolist() == [r["image_id"] for r in results]
    assert category_ids.tolist() == [r["category_id"] for r in results]
    assert scores.tolist() == [r["score"] for r in results]
