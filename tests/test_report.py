"""pure-prune report: FLOPs by hand, the table of experiments, plots and mask pictures."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from pure_prune.app import cli, report, runner
from pure_prune.app.runconfig import RunConfig

PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


def conv_apply(params, state, x, *, train):
    """(N, 2, 5, 5) -> conv 3x3, padding 1 -> (N, 4, 5, 5) -> flatten -> linear (N, 3)."""
    h = F.conv2d(x, params["conv"], padding=1)
    return F.linear(torch.flatten(h, 1), params["fc"]["weight"], params["fc"]["bias"]), state


def test_flops_by_hand_for_conv_and_linear():
    params = {"conv": torch.randn(4, 2, 3, 3), "fc": {"bias": torch.zeros(3), "weight": torch.randn(3, 100)}}
    masks = {"conv": torch.rand(4, 2, 3, 3) > 0.5, "fc": {"bias": None, "weight": None}}
    got = report.count_flops(conv_apply, params, {}, masks, (2, 5, 5))
    nnz = int(masks["conv"].sum())
    assert got == {
        "conv": (2 * 72 * 25, 2 * nnz * 25),
        "fc.weight": (2 * 300, 2 * 300),
    }  # 25 output positions


def test_flops_count_every_use_of_a_recurrent_matrix():
    def rnn(params, state, x, *, train):
        h = torch.zeros(x.shape[0], 4)
        for t in range(x.shape[1]):  # 3 steps: the recurrent matrix is used 3 times
            h = torch.tanh(x[:, t] @ params["w_in"].T + h @ params["w_h"].T)
        return h, state

    params = {"w_h": torch.randn(4, 4), "w_in": torch.randn(4, 2)}
    masks = {"w_h": torch.eye(4, dtype=torch.bool), "w_in": torch.ones(4, 2, dtype=torch.bool)}
    got = report.count_flops(rnn, params, {}, masks, (3, 2))
    assert got == {"w_h": (2 * 16 * 3, 2 * 4 * 3), "w_in": (2 * 8 * 3, 2 * 8 * 3)}


def test_mask_kinds_are_exact():
    w = torch.randn(8, 12)
    kinds = report.mask_kinds(w, 0.5)
    assert set(kinds) == {"unstructured", "rows", "columns", "2:4"}
    assert int(kinds["unstructured"].sum()) == 48
    assert int(kinds["rows"].all(dim=1).sum()) == 4 and int(kinds["rows"].any(dim=1).sum()) == 4
    assert int(kinds["columns"].all(dim=0).sum()) == 6 and int(kinds["columns"].any(dim=0).sum()) == 6
    assert bool((kinds["2:4"].reshape(8, 3, 4).sum(-1) == 2).all())
    assert "2:4" not in report.mask_kinds(torch.randn(4, 6), 0.5)  # 4 does not divide 6


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    common = dict(
        model_cfg={"sizes": (64, 16, 16, 10)}, epochs=1, batch_size=128, compile=False, progress=False
    )
    out = []
    for name, knobs in (
        ("imp", {"method": "imp", "rate": 0.5, "pruning_times": 2}),
        ("one", {"method": "one_shot", "finetune_epochs": 1}),
    ):
        cfg = dataclasses.replace(RunConfig(), **common, **knobs, save_dir=str(root / name))
        out.append(runner.run(cfg, log=lambda _: None))
    return out


def test_table_rows_and_files(runs, tmp_path):
    rows, files = report.report([r.save_dir for r in runs], tmp_path / "rep")
    imp_row, one_row = rows
    last = runs[0].rounds[-1]
    assert (
        imp_row["final_accuracy"] == last["test_accuracy"]
        and imp_row["best_accuracy"] == last["best_test_accuracy"]
    )
    assert imp_row["sparsity"] == pytest.approx(0.75, abs=1e-4) and imp_row["rounds"] == 3
    dense = 2 * (64 * 16 + 16 * 16 + 16 * 10)
    assert imp_row["flops_total"] == dense
    assert imp_row["flops_kept"] == 2 * round(0.25 * (dense // 2))  # 2 * nnz of the linear weights
    assert one_row["method"] == "one_shot" and one_row["sparsity"] == pytest.approx(0.8, abs=1e-4)
    names = {f.name for f in files}
    assert {"report.csv", "report.md", "rounds.png", "accuracy_vs_weights.png", "accuracy_bars.png"} <= names
    assert {"masks_imp.png", "mask_kinds_imp.png", "masks_one.png", "mask_kinds_one.png"} <= names
    assert all(f.read_bytes()[:8] == PNG for f in files if f.suffix == ".png")
    table = list(csv.DictReader((tmp_path / "rep" / "report.csv").open()))
    assert [r["run"] for r in table] == ["imp", "one"] and table[0]["flops_kept"] == str(
        imp_row["flops_kept"]
    )
    md = (tmp_path / "rep" / "report.md").read_text().splitlines()
    assert md[0].startswith("| run | method") and "25.00%" in md[2] and md[4] == ""
    assert md[5:] == [f"- {note}" for note in report.TABLE_NOTES]  # what sparsity and params count
    text = report.format_table(rows).splitlines()
    assert "weights_kept" in text[0] and "imp" in text[2] and text[-3:] == list(report.TABLE_NOTES)
    assert "prunable weights" in report.TABLE_NOTES[0] and "biases" in report.TABLE_NOTES[1]


def test_table_only_and_cli(runs, tmp_path, capsys):
    rows, files = report.report([runs[0].save_dir], tmp_path / "t", plots=False)
    assert [f.name for f in files] == ["report.csv", "report.md"]
    assert cli.main(["report", str(runs[0].save_dir), "--out", str(tmp_path / "c"), "--no-plots"]) == 0
    assert "best_accuracy" in capsys.readouterr().out


def test_bad_run_directories(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="not a pure-prune run directory"):
        report.load_run(tmp_path)
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "rounds.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        report.load_run(tmp_path)
    with pytest.raises(ValueError, match="at least one run directory"):
        report.report([], tmp_path / "out")
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    assert "not a pure-prune run directory" in capsys.readouterr().err


def test_plot_masks_needs_a_matrix(tmp_path):
    with pytest.raises(ValueError, match="no prunable matrix"):
        report.plot_masks({"b": None}, tmp_path / "m.png")
    path = report.plot_masks({"w": torch.rand(6, 4) > 0.5, "b": None}, tmp_path / "m.png", title="t")
    assert path.read_bytes()[:8] == PNG
    rows = json.loads(json.dumps([{"run": "x", "best_accuracy": 0.5, "final_accuracy": None}]))
    assert report.plot_accuracy_bars(rows, tmp_path / "b.png").read_bytes()[:8] == PNG


# ----------------------------------------------------------------------------- several seeds


@pytest.fixture(scope="module")
def seed_runs(tmp_path_factory):
    """A vmapped 2-seed IMP run and a vmapped 2-seed Refill run (tiny, eager)."""
    root = tmp_path_factory.mktemp("seed_runs")
    common = dict(
        model_cfg={"sizes": (64, 16, 16, 10)},
        epochs=1,
        batch_size=128,
        compile=False,
        progress=False,
        seeds=2,
    )
    out = []
    for name, knobs in (
        ("imp2", {"method": "imp", "rate": 0.5, "pruning_times": 2}),
        ("refill2", {"method": "refill", "rate": 0.5, "pruning_times": 1, "fillback_rate": 0.2}),
    ):
        cfg = dataclasses.replace(RunConfig(), **common, **knobs, save_dir=str(root / name))
        out.append(runner.run(cfg, log=lambda _: None))
    return out


def test_mean_std_band_by_hand():
    rows = [{"acc": 0.5, "acc_std": 0.1}, {"acc": 0.7, "acc_std": 0.0}]
    lower, upper = report.mean_std_band(rows, "acc")
    assert lower == pytest.approx([40.0, 70.0]) and upper == pytest.approx([60.0, 70.0])
    assert report.mean_std_band([{"acc": 0.5}], "acc") is None  # one seed: no band
    assert report.mean_std_band([{"acc": 0.5, "acc_std": None}], "acc") is None
    assert report.mean_std_band([], "acc") is None


def test_several_seeds_give_mean_std_rows_bands_and_pictures(seed_runs, runs, tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    bands = []
    fill_between = Axes.fill_between
    monkeypatch.setattr(
        Axes, "fill_between", lambda ax, *a, **k: bands.append(a) or fill_between(ax, *a, **k)
    )
    rows, files = report.report([r.save_dir for r in seed_runs], tmp_path / "rep")
    # rounds.png: sparsity and accuracy bands per run; accuracy_vs_weights.png: one per run
    assert len(bands) == 3 * len(seed_runs)
    imp_row, refill_row = rows
    last = seed_runs[0].rounds[-1]
    assert imp_row["seeds"] == 2 and refill_row["seeds"] == 2
    assert imp_row["final_accuracy"] == last["test_accuracy"]
    assert imp_row["final_accuracy_std"] == last["test_accuracy_std"] > 0
    assert imp_row["best_accuracy_std"] == last["best_test_accuracy_std"]
    dense = 2 * (64 * 16 + 16 * 16 + 16 * 10)
    assert imp_row["flops_total"] == dense and imp_row["flops_kept"] == 2 * round(0.25 * (dense // 2))
    assert refill_row["flops_kept"] is not None and refill_row["params_kept"] == round(
        seed_runs[1].rounds[-1]["params_kept"]
    )
    md = (tmp_path / "rep" / "report.md").read_text()
    mean, std = 100 * last["test_accuracy"], 100 * last["test_accuracy_std"]
    assert f"{mean:.2f} ± {std:.2f}%" in md and "| seeds |" in md
    assert " ± " in report.format_table(rows)
    names = {f.name for f in files}
    assert {"rounds.png", "accuracy_vs_weights.png", "accuracy_bars.png"} <= names
    assert {"masks_imp2.png", "mask_kinds_imp2.png", "masks_refill2.png", "mask_kinds_refill2.png"} <= names
    assert all(f.read_bytes()[:8] == PNG for f in files if f.suffix == ".png")
    table = list(csv.DictReader((tmp_path / "rep" / "report.csv").open()))
    assert float(table[0]["final_accuracy_std"]) == pytest.approx(last["test_accuracy_std"])
    bands.clear()
    single, _ = report.report([runs[0].save_dir], tmp_path / "one")
    assert bands == [] and single[0]["seeds"] == 1 and single[0]["final_accuracy_std"] is None


def test_csv_text_writes_the_header_and_rows_in_column_order():
    from pure_prune.app import report as report_mod

    text = report_mod.csv_text([{"b": 2, "a": 1}], columns=("a", "b"))
    assert text.splitlines() == ["a,b", "1,2"]
    assert report_mod.csv_text([]).splitlines()[0].split(",") == list(report_mod.COLUMNS)


# ----------------------------------------------------------------------------- what the pictures show


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plotting functions save, in order (``Figure.savefig`` recorded)."""
    from matplotlib.figure import Figure

    figures = []
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: figures.append(fig) or savefig(fig, *a, **k))
    return figures


def _error_bars(ax):
    from matplotlib.container import ErrorbarContainer

    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def test_accuracy_bars_span_the_values_and_show_std_only_for_several_seeds(drawn, tmp_path):
    one_seed = [
        {"run": "a", "method": "imp", "seeds": 1, "best_accuracy": 0.9028, "final_accuracy": 0.8944},
        {"run": "b", "method": "one_shot", "seeds": 1, "best_accuracy": 0.8917, "final_accuracy": 0.8917},
    ]
    report.plot_accuracy_bars(one_seed, tmp_path / "one.png")
    ax = drawn[-1].axes[0]
    bottom, top = ax.get_ylim()
    assert 80 < bottom < 89.17 and 90.28 < top < 93  # the 1.1-point differences fill the axis
    assert _error_bars(ax) == [] and "axis starts at" in ax.get_title() and "std" not in ax.get_title()
    labels = {t.get_text() for t in ax.texts}
    assert {"90.28", "89.44", "89.17"} <= labels
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["best", "final"]
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1  # beside the bars, not on them

    seeds = [{**one_seed[0], "seeds": 3, "best_accuracy_std": 0.01, "final_accuracy_std": 0.02}, one_seed[1]]
    report.plot_accuracy_bars(seeds, tmp_path / "seeds.png")
    ax = drawn[-1].axes[0]
    bars = _error_bars(ax)
    assert len(bars) == 2 and "± std over seeds" in ax.get_title()  # best and final of run "a" only
    (segments,) = bars[1].lines[2]
    assert [tuple(seg[:, 1]) for seg in segments.get_segments()] == [pytest.approx((87.44, 91.44))]
    assert ax.get_ylim()[0] < 87.44 and "a\nimp, 3 seeds" in [t.get_text() for t in ax.get_xticklabels()]


def test_mask_pictures_have_a_legend_axis_labels_and_layer_titles(drawn, tmp_path):
    masks = {
        "conv": {"bias": None, "weight": torch.arange(16 * 3 * 9).reshape(16, 3, 3, 3) % 4 == 0},
        "fc": {"bias": None, "weight": torch.ones(10, 64, dtype=torch.bool)},
    }
    report.plot_masks(masks, tmp_path / "m.png", title="final masks")
    fig = drawn[-1]
    conv, fc = fig.axes[:2]
    assert conv.get_title() == "conv.weight: 75.0% pruned" and fc.get_title() == "fc.weight: 0.0% pruned"
    assert conv.get_xlabel() == "inputs: 3 channels × 9 kernel positions"
    assert conv.get_ylabel() == "output channels (16)"
    assert fc.get_xlabel() == "input units (64)" and fc.get_ylabel() == "output units (10)"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["kept", "pruned"]
    assert fig.get_suptitle() == "final masks"

    report.plot_mask_kinds(torch.randn(8, 12), 0.5, tmp_path / "k.png", title="kinds")
    fig = drawn[-1]
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "unstructured: 50.0% pruned",
        "rows: 50.0% pruned",
        "columns: 50.0% pruned",
        "2:4: 50.0% pruned (fixed by the pattern)",
    ]
    assert all(
        ax.get_xlabel() == "input units (12)" and ax.get_ylabel() == "output units (8)" for ax in fig.axes
    )
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["kept", "pruned"]


def test_plain_log_axis_reads_100_10_1():
    from pure_prune.app import extras

    plt = extras.pyplot()
    fig, (wide, narrow) = plt.subplots(1, 2)
    try:
        wide.plot([100, 0.5], [0, 1])
        narrow.plot([100, 12.5], [0, 1])
        for ax in (wide, narrow):
            ax.set_xscale("log")
            report.plain_log_axis(ax, "x")
        major = wide.xaxis.get_major_formatter()
        assert [major(v, 0) for v in (100, 10, 1, 0.1)] == ["100", "10", "1", "0.1"]
        assert wide.xaxis.get_minor_formatter()(50, 0) == ""  # 2.3 decades: only the powers of ten
        assert narrow.xaxis.get_minor_formatter()(50, 0) == "50"  # under two decades: 50, 20 too
        with pytest.raises(ValueError, match="axis must be 'x' or 'y'"):
            report.plain_log_axis(wide, "z")
    finally:
        plt.close(fig)


def test_accuracy_vs_weights_has_a_plain_percent_axis(runs, drawn, tmp_path):
    run = report.load_run(runs[0].save_dir)
    report.plot_accuracy_vs_weights([run], tmp_path / "w.png")
    ax = drawn[-1].axes[0]
    drawn[-1].canvas.draw()
    shown = {t.get_text() for t in ax.get_xticklabels(minor=False) + ax.get_xticklabels(minor=True)}
    assert {"100", "50"} <= shown and not any("10^" in t or "times" in t for t in shown)
    assert ax.get_xlabel() == "prunable weights remaining (%, log scale)"
