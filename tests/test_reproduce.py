"""`gumbel reproduce`: the material's registry, the verdicts on claims, and the command end to end
(on a tiny stand-in for the benchmark, one epoch per run)."""

import csv
import dataclasses
import json
import math
import statistics

import pytest
from scipy import stats as scipy_stats
from typer.testing import CliRunner

from gumbel_analysis.cli.app import app
from gumbel_analysis.data.synthetic import SyntheticSpec
from gumbel_analysis.errors import InputError
from gumbel_analysis.experiments import material
from gumbel_analysis.experiments.claims import (
    CONTRADICTED,
    HOLDS,
    NO_RESULT,
    NOT_ESTABLISHED,
    judge,
    verdict_text,
)
from gumbel_analysis.experiments.material import DEFAULT_ITEMS, ITEMS, Claim, all_items
from gumbel_analysis.experiments.measure import Measured
from gumbel_analysis.experiments.reproduce import parse_only
from gumbel_analysis.experiments.stats import MAX_SEEDS_NEEDED, paired, seeds_to_resolve
from gumbel_analysis.paper import PAPER_METRICS
from gumbel_analysis.spec.config import TrainConfig, resolve

runner = CliRunner()
TINY = SyntheticSpec(classes=5, train_images=20, val_images=6, size=64, seed=2)
FAST = ["--quick", "--workers", "0", "--device", "cpu", "--no-progress"]


@pytest.fixture
def tiny_material(monkeypatch):
    monkeypatch.setattr(material, "BENCHMARK", TINY)
    monkeypatch.setattr(material, "QUICK_EPOCHS", {"1x": 1, "2x": 1})


def assert_one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines


# --- the registry ---------------------------------------------------------------------------------


def test_the_registry_is_consistent():
    assert set(all_items()) == set(ITEMS) and set(DEFAULT_ITEMS) <= set(ITEMS)
    by_name = {}
    for item in ITEMS.values():
        names = [c.name for c in item.configs]
        assert len(names) == len(set(names)), item.key
        for config in item.configs:  # one name is one configuration everywhere (any label)
            unlabelled = dataclasses.replace(config, label="")
            assert by_name.setdefault(config.name, unlabelled) == unlabelled
        if item.baseline:
            assert item.baseline in names
        rows = names + [c.name for c in item.derived]  # derived rows: computed, not trained
        assert not set(names) & {c.name for c in item.derived}, item.key
        assert set(item.paper) <= set(rows), item.key
        for claim in item.claims:
            assert claim.better in rows and set(claim.worse) <= set(rows), claim.text
        for k, config in enumerate(item.configs):  # a first stage is planned before its second
            assert config.first_stage is None or config.first_stage in names[:k], config.name
    # every configuration is a valid `gumbel train` setting, at both schedules
    for config in by_name.values():
        stage = {"from_run": "/first/stage"} if config.first_stage else {}
        for epochs, schedule in ((None, "1x"), (None, "2x"), (2, "1x")):
            resolve(TrainConfig.from_dict({**config.values(epochs, schedule), **stage}))


def test_each_pairwise_claim_is_a_gain_the_paper_reports():
    # A claim "A > B on M" must be one the paper makes: its own table has A above B on M (a
    # step with the paper's sign negative, such as Gumbel with RFS alone, is not a claim).
    for item in ITEMS.values():
        for claim in item.claims:
            if len(claim.worse) != 1 or claim.metric not in PAPER_METRICS:
                continue
            k = PAPER_METRICS.index(claim.metric)
            gain = item.paper[claim.better][k] - item.paper[claim.worse[0]][k]
            assert gain > 0, claim.text
            assert claim.paper == f"{gain:+.1f}", claim.text


def test_tables_1_and_2_judge_the_issues_claims():
    def pairs(key):
        return {(c.better, c.worse[0], c.metric) for c in ITEMS[key].claims if len(c.worse) == 1}

    for loss in ("eql", "droploss", "acsl", "federated"):  # Gumbel over Sigmoid per loss
        for metric in ("AP", "APr"):
            assert (f"{loss}-gumbel", f"{loss}-sigmoid", metric) in pairs("table2")
    table1 = pairs("table1")
    # Gumbel over Softmax without and with Enh and RFS + Enh; RFS and DropLoss each added to
    # Gumbel alone (what each contributes), and DropLoss added to RFS + Gumbel + Enh.
    for better, worse in (
        ("gumbel", "softmax"),
        ("gumbel-enh", "softmax-enh"),
        ("gumbel-rfs-enh", "softmax-rfs-enh"),
        ("gumbel-rfs", "gumbel"),
        ("gol", "gumbel"),
        ("gol-rfs-enh", "gumbel-rfs-enh"),
    ):
        assert (better, worse, "AP") in table1


def test_the_benchmark_has_lvis_like_groups():
    from gumbel_analysis.data.synthetic import (
        frequency_group,
        frequency_thresholds,
        train_image_counts,
        val_image_counts,
    )

    spec = material.BENCHMARK
    counts = train_image_counts(spec.classes, spec.train_images)
    groups = [frequency_group(int(n), frequency_thresholds(spec.train_images)) for n in counts]
    rare, common, frequent = (groups.count(g) for g in "rcf")
    # Most classes rare or common, every group present, and APr an average over many classes
    # (its seed spread falls with their number; docs/reproduce.md).
    assert rare + common > 0.75 * spec.classes and rare >= 40 and frequent >= 1
    val = val_image_counts(counts, spec.train_images, spec.val_images, spec.val_min_images)
    assert val.min() >= 6


def test_only_is_parsed_in_the_material_order():
    assert parse_only("fig1, TABLE3", DEFAULT_ITEMS) == ["table3", "fig1"]
    assert parse_only(None, DEFAULT_ITEMS) == list(DEFAULT_ITEMS)
    with pytest.raises(InputError, match="unknown item 'table9'"):
        parse_only("table3,table9", DEFAULT_ITEMS)
    with pytest.raises(InputError, match="--only needs"):
        parse_only(" , ", DEFAULT_ITEMS)


# --- verdicts -------------------------------------------------------------------------------------


def measured_with(
    values: dict[str, list[float]], metric: str = "AP", paired: bool = False
) -> Measured:
    """Each configuration's values as seeds 0, 1, ... (paired) or seeds of its own (not)."""
    return Measured(
        values={
            (name, "1x", metric): {s + (0 if paired else 100 * i): x for s, x in enumerate(v)}
            for i, (name, v) in enumerate(values.items())
        }
    )


def test_a_significant_difference_holds_with_scipys_welch_t():
    claim = Claim("a > b", "AP", "a", ("b",), "+1")
    a, b = [10.0, 11.0, 12.5], [5.0, 6.5, 7.0]
    v = judge(claim, measured_with({"a": a, "b": b}), "1x")
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    se = math.sqrt(statistics.variance(a) / 3 + statistics.variance(b) / 3)
    assert v.verdict == HOLDS and v.test.test == "welch"
    assert v.delta == pytest.approx(statistics.fmean(a) - statistics.fmean(b), rel=1e-12)
    assert v.se == pytest.approx(se, rel=1e-12) and v.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert v.test.df == pytest.approx(ref.df, rel=1e-9) and v.n == (3, 3)
    assert verdict_text(v).startswith(f"holds: ΔAP = +{v.delta:.1f} ± {se:.1f} (SE), Welch t(")
    record = v.as_dict()
    assert record["t"] == pytest.approx(ref.statistic) and record["p_holm"] == record["p"]


def test_runs_of_the_same_seeds_are_compared_pair_by_pair():
    """Seeds that move both sides together: unpaired the difference is within the spread,
    paired it holds, by scipy's paired t test on df = 2."""
    claim = Claim("a > b", "APr", "a", ("b",), "+3")
    a, b = [38.3, 33.9, 30.6], [31.8, 29.9, 27.0]
    assert judge(claim, measured_with({"a": a, "b": b}, "APr"), "1x").verdict == NOT_ESTABLISHED
    v = judge(claim, measured_with({"a": a, "b": b}, "APr", paired=True), "1x")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    ref = scipy_stats.ttest_rel(a, b)
    assert v.verdict == HOLDS and v.test.test == "paired" and v.test.df == 2
    assert v.delta == pytest.approx(statistics.fmean(diffs), rel=1e-12)
    assert v.se == pytest.approx(statistics.stdev(diffs) / math.sqrt(3), rel=1e-12)
    assert v.p == pytest.approx(ref.pvalue, rel=1e-9) and v.p < 0.05
    assert "paired t(2) = " in verdict_text(v)


def test_twice_the_standard_error_is_not_a_95_percent_test_on_two_df():
    """The issue's case: +3.5 APr over 3 paired seeds, p = 0.145. |Δ| > 2 SE, yet the paired t
    test on 2 df (97.5% quantile 4.30) does not reject: not established."""
    claim = Claim("a > b", "APr", "a", ("b",), "+3")
    diffs = [0.9, 3.5, 6.1]  # mean 3.5, sd 2.6, SE = 2.6 / sqrt(3) = 1.50: 3.5 > 2 SE
    a, b = [30.0 + d for d in diffs], [30.0, 30.0, 30.0]
    v = judge(claim, measured_with({"a": a, "b": b}, "APr", paired=True), "1x")
    assert v.delta > 2 * v.se
    assert v.p == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue, rel=1e-9)
    assert v.p == pytest.approx(0.145, abs=5e-4)
    assert v.verdict == NOT_ESTABLISHED and "within the seed spread" in verdict_text(v)


def test_within_the_spread_is_not_established_whatever_the_sign():
    claim = Claim("a > b", "APr", "a", ("b",), "+1")
    for a in ([14.0, 6.0, 13.0], [9.0, 10.0, 8.5]):  # mean above, then below b's
        v = judge(claim, measured_with({"a": a, "b": [9.0, 10.0, 11.0]}, "APr"), "1x")
        assert v.verdict == NOT_ESTABLISHED and "within the seed spread" in verdict_text(v)


def smallest_resolving_seed_count(delta: float, sd: float) -> int:
    """Brute force with scipy: the fewest paired seeds n with |delta| / (sd / sqrt(n)) above
    the 97.5% quantile of t on n - 1 df."""
    n = 2
    while not abs(delta) / (sd / math.sqrt(n)) > scipy_stats.t.ppf(0.975, n - 1):
        n += 1
    return n


def test_not_established_says_how_many_seeds_would_resolve_the_difference():
    """A +2.6 APr difference within the spread of 3 paired seeds: the same per-seed spread
    resolves it at the first seed count where the t test on n - 1 df rejects."""
    claim = Claim("a > b", "APr", "a", ("b",), "+3")
    a, b = [38.3, 33.9, 30.6], [31.8, 29.9, 33.4]
    v = judge(claim, measured_with({"a": a, "b": b}, "APr", paired=True), "1x")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    expected = smallest_resolving_seed_count(statistics.fmean(diffs), statistics.stdev(diffs))
    assert v.verdict == NOT_ESTABLISHED and v.seeds_needed == expected
    assert expected > 3
    assert f"needs about {expected} seeds per side" in verdict_text(v)
    assert v.as_dict()["seeds_needed"] == expected


@pytest.mark.parametrize(("delta", "sd"), [(3.0, 4.8), (-1.0, 2.0), (0.5, 0.3), (2.0, 2.0)])
def test_seeds_to_resolve_is_the_fewest_seeds_the_t_test_rejects_at(delta, sd):
    d = paired([delta - sd, delta, delta + sd])  # mean delta, sample sd exactly sd
    assert d.delta == pytest.approx(delta) and math.sqrt(d.spread[0]) == pytest.approx(sd)
    assert seeds_to_resolve(d) == smallest_resolving_seed_count(delta, sd)


def test_seeds_to_resolve_caps_hopeless_differences_and_ignores_zero():
    assert seeds_to_resolve(paired([-1.0, 0.0, 1.0])) is None
    assert seeds_to_resolve(paired([-5.0, 0.01, 5.02])) == MAX_SEEDS_NEEDED + 1
    claim = Claim("a > b", "AP", "a", ("b",), "+1")
    v = judge(claim, measured_with({"a": [10.0, 0.0, 5.01], "b": [5.0, 5.0, 5.0]}), "1x")
    assert v.verdict == NOT_ESTABLISHED
    assert f"more than {MAX_SEEDS_NEEDED} seeds" in verdict_text(v)


def test_the_opposite_beyond_the_spread_contradicts():
    claim = Claim("a > b", "AP", "a", ("b",), "+1")
    v = judge(claim, measured_with({"a": [1.0, 2.0, 3.0], "b": [10.0, 11.0, 12.0]}), "1x")
    assert v.verdict == CONTRADICTED and v.delta == pytest.approx(-9.0)


def test_one_seed_establishes_nothing():
    claim = Claim("a > b", "AP", "a", ("b",), "+1")
    v = judge(claim, measured_with({"a": [50.0], "b": [10.0]}), "1x")
    assert v.verdict == NOT_ESTABLISHED and v.se is None and v.delta == pytest.approx(40.0)
    assert "one seed" in verdict_text(v)


def test_lower_is_better_claims_flip_the_direction():
    claim = Claim("a's KL < b's", "kl_mean", "a", ("b",), "lower", lower_is_better=True)
    v = judge(
        claim, measured_with({"a": [0.1, 0.11, 0.12], "b": [0.5, 0.52, 0.49]}, "kl_mean"), "1x"
    )
    assert v.verdict == HOLDS and v.delta < 0


def test_best_of_several_needs_every_margin():
    claim = Claim("a is best", "AP", "a", ("b", "c"), "best")
    values = {"a": [10.0, 11.0, 12.0], "b": [1.0, 2.0, 3.0], "c": [9.0, 12.0, 10.0]}
    v = judge(claim, measured_with(values), "1x")
    assert v.verdict == NOT_ESTABLISHED and v.against == "c"
    values["c"] = [4.0, 5.0, 6.0]
    assert judge(claim, measured_with(values), "1x").verdict == HOLDS
    values["c"] = [20.0, 21.0, 22.0]
    v = judge(claim, measured_with(values), "1x")
    assert v.verdict == CONTRADICTED and v.against == "c"


def test_a_claim_without_finished_runs_has_no_result():
    claim = Claim("a > b", "AP", "a", ("b",), "+1")
    v = judge(claim, measured_with({"a": [1.0, 2.0]}), "1x")
    assert v.verdict == NO_RESULT and "b" in v.detail


# --- the command ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--seeds", "0"], "--seeds"),
        (["--seed", "-1"], "--seed"),
        (["--only", "table9"], "table9"),
        (["--device", "tpu"], "--device"),
        (["--workers", "-1"], "--workers"),
    ],
)
def test_bad_options_are_one_line_and_create_nothing(tmp_path, args, fragment):
    out = tmp_path / "report"
    result = runner.invoke(app, ["reproduce", "--out", str(out), *args])
    assert_one_line_error(result, fragment)
    assert not out.exists()


def test_out_must_be_a_folder(tmp_path):
    out = tmp_path / "file"
    out.write_text("x")
    assert_one_line_error(runner.invoke(app, ["reproduce", "--out", str(out)]), str(out))
    assert out.read_text() == "x"


def test_a_data_folder_of_another_dataset_is_refused(tiny_material, tmp_path):
    from gumbel_analysis.data.synthetic import make_synthetic

    out = tmp_path / "report"
    out.mkdir()
    make_synthetic(out / "data", SyntheticSpec(classes=5, train_images=20, val_images=4, size=64))
    result = runner.invoke(app, ["reproduce", "--out", str(out), *FAST])
    assert_one_line_error(result, "holds another dataset")
    assert not (out / "runs").exists()


def _csv_rows(path):
    with open(path, newline="") as f:
        return {row["configuration"]: row for row in csv.DictReader(f)}


@pytest.mark.slow
def test_reproduce_quick_end_to_end_then_resumes_and_adds_seeds(tiny_material, tmp_path):
    out = tmp_path / "report"
    result = runner.invoke(app, ["reproduce", "--out", str(out), "--json", *FAST])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    runs = sorted(p.name for p in (out / "runs").iterdir() if p.name != ".launch")
    assert len(runs) == 7 and all(p.endswith("-1x-quick-s0") for p in runs)  # shared, not 9
    assert set(json.loads((out / "timings.json").read_text())) == set(runs)
    # the report: one HTML file with the figures inside, tables as Markdown and CSV
    page = (out / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 4
    for key in DEFAULT_ITEMS:
        assert ITEMS[key].title.split(":")[0] in page
        assert f"--only {key}" in page and (out / "tables" / f"{key}.md").is_file()
        assert (out / "tables" / f"{key}.csv").is_file()
    figures = {p.name for p in (out / "figures").iterdir()}
    assert figures == {"figure_1i.png", "figure_1ii.png", "figure_2.png", "figure_3.png"}
    claims = summary["claims"]
    assert len(claims) == sum(len(ITEMS[k].claims) for k in DEFAULT_ITEMS)
    assert {c["verdict"] for c in claims} == {NOT_ESTABLISHED}  # one seed: never established
    config = json.loads((out / "runs" / "gumbel-1x-quick-s0" / "config.json").read_text())
    assert config["epochs"] == 1 and config["score_threshold"] == material.QUICK_SCORE_THRESHOLD
    gumbel = json.loads((out / "runs" / "gumbel-1x-quick-s0" / "metrics.json").read_text())
    row = _csv_rows(out / "tables" / "table3.csv")["Gumbel"]
    assert float(row["AP"]) == pytest.approx(gumbel["AP"]) and row["AP_std"] == ""

    # a rerun trains nothing; a run removed (as if killed before its first checkpoint) is the
    # only one trained again
    final = {r: (out / "runs" / r / "model_final.pt").stat().st_mtime_ns for r in runs}
    for child in (out / "runs" / "sigmoid-1x-quick-s0").iterdir():
        if child.name not in ("config.json", "metrics.jsonl", "grads.h5"):
            child.unlink()
    result = runner.invoke(app, ["reproduce", "--out", str(out), "--json", *FAST])
    assert result.exit_code == 0, result.output
    for r in runs:
        changed = (out / "runs" / r / "model_final.pt").stat().st_mtime_ns != final[r]
        assert changed == (r == "sigmoid-1x-quick-s0"), r

    # a second seed of Table 3: three new runs; each row is the mean and sample std of two
    result = runner.invoke(
        app, ["reproduce", "--out", str(out), "--only", "table3", "--seeds", "2", *FAST]
    )
    assert result.exit_code == 0, result.output
    assert len([p for p in (out / "runs").iterdir() if p.name != ".launch"]) == 10
    rows = _csv_rows(out / "tables" / "table3.csv")
    for name, label in (("sigmoid", "Sigmoid"), ("softmax", "Softmax"), ("gumbel", "Gumbel")):
        ap = [
            json.loads((out / "runs" / f"{name}-1x-quick-s{s}" / "metrics.json").read_text())["AP"]
            for s in (0, 1)
        ]
        assert float(rows[label]["AP"]) == pytest.approx(statistics.fmean(ap), rel=1e-9)
        assert float(rows[label]["AP_std"]) == pytest.approx(statistics.stdev(ap), rel=1e-9)
        assert rows[label]["AP_n"] == "2"


@pytest.mark.parametrize("amp", [None, False, True])
def test_each_tables_command_says_amp_when_its_runs_used_it(tmp_path, amp):
    from pathlib import Path

    from gumbel_analysis.experiments.plan import PlannedRun
    from gumbel_analysis.experiments.report import command_of
    from gumbel_analysis.experiments.reproduce import Plan, Planned

    item = ITEMS["table3"]
    values = {} if amp is None else {"amp": amp}
    runs = [
        Planned(c, "1x", 12, PlannedRun(Path(tmp_path / c.name), values, "train", "new", seed=s))
        for c in item.configs
        for s in (0, 1)
    ]
    command = command_of(item, Plan(tmp_path, [item], [0, 1], False, runs))
    assert command.startswith(f"gumbel reproduce --out {tmp_path} --only table3 --seeds 2")
    assert command.endswith("--amp") == bool(amp)


def test_timings_of_two_reproduce_processes_on_one_out_are_both_kept(tmp_path):
    """Two `gumbel reproduce` on one OUT (their runs locked apart) each time runs: the file
    keeps both processes' entries, where each used to write back only what it had read."""
    from gumbel_analysis.experiments.plan import PlannedRun
    from gumbel_analysis.experiments.reproduce import (
        TIMINGS,
        Plan,
        Planned,
        carry_out,
        read_timings,
    )

    class Finishes:
        """A launcher that 'trains' each run in 5 s while the other process times one too."""

        def run(self, runs, done):
            for i, run in enumerate(runs):
                other = read_timings(tmp_path) | {f"other-s{i}": 7.0}
                (tmp_path / TIMINGS).write_text(json.dumps(other))
                run.status, run.seconds = "finished", 5.0
                done(i, run)
            return True

    (tmp_path / TIMINGS).write_text(json.dumps({"earlier": 3.0}))
    runs = [
        Planned(material.GUMBEL, "1x", 1, PlannedRun(tmp_path / f"g-s{s}", {}, "train", "new", s))
        for s in (0, 1)
    ]
    assert carry_out(Plan(tmp_path, [], [0, 1], False, runs), launcher=Finishes(), progress=False)
    assert read_timings(tmp_path) == {
        "earlier": 3.0, "other-s0": 7.0, "other-s1": 7.0, "g-s0": 5.0, "g-s1": 5.0,
    }  # fmt: skip
