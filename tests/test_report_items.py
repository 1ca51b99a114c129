"""A figure of `gumbel reproduce` is one Item of the registry: a throwaway figure, registered with
its own measure and draw, is planned, measured, drawn, judged and reported with nothing else
touched (on fake run folders: no training)."""

import csv
import io
import json

import pytest
from typer.testing import CliRunner

from gumbel_analysis.cli import reproduce as reproduce_cli
from gumbel_analysis.cli.app import app
from gumbel_analysis.data.synthetic import SyntheticSpec, make_synthetic
from gumbel_analysis.experiments import material
from gumbel_analysis.experiments.claims import HOLDS
from gumbel_analysis.experiments.material import DEFAULT_ITEMS, GUMBEL, SIGMOID, Claim, Item
from gumbel_analysis.experiments.measure import Figure, Measurement
from gumbel_analysis.experiments.plan import SKIP, PlannedRun
from gumbel_analysis.experiments.report import write_report
from gumbel_analysis.experiments.reproduce import Plan, Planned, parse_only, run_path
from gumbel_analysis.experiments.tabular import table

KEY = "fig99"
# Per seed: (Sigmoid's AP, Gumbel's AP); the throwaway figure measures 10 x AP.
AP = {0: (10.0, 12.0), 1: (11.0, 13.1), 2: (9.0, 11.2)}


def measure_tenfold(ctx):
    """The throwaway figure's own value: ten times each finished run's AP."""
    for config in ctx.item.configs:
        for seed, run in ctx.measured.finished(config.name, ctx.item.schedule).items():
            ctx.measured.add(
                config.name, ctx.item.schedule, "tenfold", seed, 10 * run.metrics["AP"]
            )
    rows = [
        [c.label, ctx.measured.stat(c.name, ctx.item.schedule, "tenfold")] for c in ctx.item.configs
    ]
    return Measurement([table(["run", "tenfold AP"], rows, "Ten times AP.")], drawable="drawn")


def draw_tenfold(ctx, measurement):
    path = ctx.figures / "figure_99.png"
    path.write_bytes(b"\x89PNG " + measurement.drawable.encode())
    return [Figure("the throwaway figure", path)]


THROWAWAY = Item(
    KEY,
    "Figure 99: a throwaway figure (schedule 1x)",
    "1x",
    (SIGMOID, GUMBEL),
    claims=(
        Claim(
            "Gumbel's tenfold AP > Sigmoid's",
            "tenfold",
            "gumbel",
            ("sigmoid",),
            "+20",
            quantity="tenfold AP",
            unit=" pt",
            digits=2,
        ),
    ),
    measure=measure_tenfold,
    draw=draw_tenfold,
)


@pytest.fixture
def throwaway():
    material.register(THROWAWAY)
    yield THROWAWAY
    del material.ITEMS[KEY]
    assert KEY not in material.all_items()


def fake_runs(out, item, seeds):
    """Finished run folders of the item's configurations, as reproduce --quick names them."""
    planned = []
    for config, column in zip(item.configs, (0, 1), strict=True):
        for seed in seeds:
            path = run_path(out, config, item.schedule, True, seed)
            path.mkdir(parents=True)
            cfg = {"seed": seed, "loss": config.loss, "activation": config.loss}
            (path / "config.json").write_text(json.dumps(cfg))
            (path / "metrics.json").write_text(json.dumps({"AP": AP[seed][column]}))
            (path / "model_final.pt").write_bytes(b"")
            run = PlannedRun(path, {}, SKIP, "finished", seed=seed)
            planned.append(Planned(config, item.schedule, 1, run))
    return planned


def test_a_registered_figure_is_an_item_of_only_and_the_help(throwaway):
    assert KEY in material.all_items() and material.all_items()[-1] == KEY  # after the figures
    assert parse_only(f"{KEY},table3", DEFAULT_ITEMS) == ["table3", KEY]
    assert KEY in reproduce_cli.only_help() and KEY in reproduce_cli.every_item_help()
    with pytest.raises(ValueError, match="registered already"):
        material.register(throwaway)


def test_a_registered_figure_is_measured_drawn_judged_and_reported(throwaway, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    make_synthetic(out / "data", SyntheticSpec(classes=5, train_images=20, val_images=6, size=64))
    seeds = sorted(AP)
    plan = Plan(out, [material.ITEMS[KEY]], seeds, True, fake_runs(out, throwaway, seeds))
    summary = write_report(plan)

    assert summary["figures"] == [str(out / "figures" / "figure_99.png")]
    (claim,) = summary["claims"]
    assert claim["item"] == KEY and claim["verdict"] == HOLDS  # paired: +21 ± 0.58
    assert claim["text"].startswith("holds: Δtenfold AP = +21.00 pt ± ")
    assert claim["test"] == "paired" and claim["df"] == 2 and claim["p"] < 0.05
    assert claim["p_holm"] == claim["p"] and claim["claims_adjusted_over"] == 1  # one claim
    rows = list(csv.DictReader(io.StringIO((out / "tables" / "claims.csv").read_text())))
    assert len(rows) == 1 and rows[0]["item"] == KEY and rows[0]["verdict"] == HOLDS
    assert float(rows[0]["p"]) == pytest.approx(claim["p"]) and rows[0]["df"] == "2"
    # The per-seed values behind it, one line per finished run, in the plan's order.
    runs = list(csv.DictReader(io.StringIO((out / "tables" / "runs.csv").read_text())))
    assert [(r["config"], r["seed"]) for r in runs] == [
        (c, str(s)) for c in ("sigmoid", "gumbel") for s in seeds
    ]
    assert [float(r["AP"]) for r in runs] == [AP[s][i] for i in (0, 1) for s in seeds]
    assert runs[0]["run"] == "sigmoid-1x-quick-s0" and runs[0]["schedule"] == "1x"
    assert runs[0]["seconds"] == "" and runs[0]["APr"] == ""  # not timed; not measured
    md = (out / "tables" / f"{KEY}.md").read_text()
    assert md.startswith(f"# {throwaway.title}\n") and f"--only {KEY} --seeds 3" in md
    assert "| Gumbel | 121.0 ± 9.5 |" in md and "Ten times AP." in md
    assert "Gumbel's tenfold AP > Sigmoid's" in md
    page = (out / "report.html").read_text()
    assert "Holm-Bonferroni" in page and "Student's t test" in page
    assert f"<h2 id='{KEY}'>" in page and "the throwaway figure" in page
    assert page.count("src='data:image/png;base64,") == 1


def test_the_help_lists_every_item_of_the_registry():
    result = CliRunner().invoke(app, ["reproduce", "--help"], env={"TERMINAL_WIDTH": "240"})
    assert result.exit_code == 0, result.output
    assert ",".join(material.all_items()) in result.stdout


def test_a_derived_row_is_shown_with_its_measured_seeds_and_judged(tmp_path):
    """Table 4's NorCal row is computed by its measure, not trained: the metrics table shows
    it after the configurations with the seeds measured, and the claim compares with it."""
    from gumbel_analysis.experiments.claims import judge
    from gumbel_analysis.experiments.measure import Measured
    from gumbel_analysis.experiments.report import item_metrics_table

    item = material.ITEMS["table4"]
    assert [c.name for c in item.derived] == ["norcal"] and "softmax-rfs" in [
        c.name for c in item.configs
    ]
    measured = Measured()
    for seed, (norcal, gol) in enumerate([(20.0, 22.0), (21.0, 23.5), (19.5, 21.0)]):
        measured.add("norcal", "2x", "AP", seed, norcal)
        measured.add("gol-rfs-enh", "2x", "AP", seed, gol)
    plan = Plan(tmp_path, [item], [0, 1, 2], False, [])
    rows = item_metrics_table(item, measured, plan).rows
    norcal = rows[-1]
    shown = [getattr(cell, "shown", cell) for cell in norcal]
    assert shown[0] == "NorCal (on Softmax, RFS)" and shown[5] == "3 of 3 (calibrated)"
    assert norcal[6].stat.mean == pytest.approx(20.1667, abs=1e-3) and norcal[6].stat.n == 3
    claim = next(c for c in item.claims if "norcal" in c.worse)
    for other in claim.worse:
        for seed in range(3):
            if other != "norcal":
                measured.add(other, "2x", "AP", seed, 10.0 + seed)
    tests = dict(judge(claim, measured, "2x").tests)
    assert tests["norcal"].delta == pytest.approx(2.0)  # paired over the 3 seeds


def test_a_row_not_run_yet_names_the_activation_its_loss_trains_with(tmp_path):
    """Before any run, the act. column comes from the loss catalogue, not from a run's config:
    GOL trains with Gumbel, RFS Softmax with Softmax, Sigmoid EQL with Sigmoid."""
    from gumbel_analysis.experiments.measure import Measured
    from gumbel_analysis.experiments.report import item_metrics_table

    for key in ("table1", "table2"):
        item = material.ITEMS[key]
        plan = Plan(tmp_path, [item], [0, 1, 2], False, [])
        rows = item_metrics_table(item, Measured(), plan).rows
        shown = {getattr(row[0], "shown", row[0]): getattr(row[2], "shown", row[2]) for row in rows}
        assert all(shown.values()), shown
        if key == "table1":
            assert shown["RFS"] == "softmax" and shown["RFS + Gumbel"] == "gumbel"
            assert shown["RFS + Gumbel + Enh + DropLoss (GOL)"] == "gumbel"
        else:
            assert shown["EQL / Sigmoid"] == "sigmoid" and shown["EQL / Gumbel"] == "gumbel"
