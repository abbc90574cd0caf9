"""lrtrain report: plots and the Markdown summary, from tiny run directories the Trainer really wrote."""

import re
import shutil

import pytest
import torch
from PIL import Image

import lrtrain as lr
from lrtrain import cli
from lrtrain import report
from lrtrain.config import resolve
from lrtrain.layers import LowRankConv2d
from lrtrain.train import Trainer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A TRP run (ranks.csv, low-rank compact model) and a dense run of ResNet-20 on 8×8 generated images."""
    root = tmp_path_factory.mktemp("runs")
    for name, method in [("trp", {"name": "trp", "period": 2, "energy": 0.9}), ("dense", {"name": "dense"})]:
        cfg = resolve({
            "name": name, "out_dir": str(root / name), "model": {"name": "resnet20"},
            "data": {"name": "sample", "train_size": 64, "test_size": 32, "image_size": 8, "num_classes": 4,
                     "batch_size": 32},
            "optim": {"lr": 0.05}, "schedule": {"name": "constant"},
            "train": {"epochs": 3, "progress": False}, "method": method,
        })
        torch.manual_seed(0)
        Trainer(cfg).fit()
    return root


def linked_images(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def assert_real_png(path):
    assert path.read_bytes().startswith(PNG_SIGNATURE), path
    with Image.open(path) as image:
        width, height = image.size
        colours = image.convert("RGB").getcolors(maxcolors=1 << 24)
    assert width > 100 and height > 100, (path, image.size)
    assert len(colours) > 20, (path, len(colours))  # lines, text and colour maps, not a blank canvas


@pytest.fixture(scope="module")
def two_runs(runs, tmp_path_factory):
    """The report of both runs, with published points: (its folder, its README)."""
    folder = tmp_path_factory.mktemp("two_runs")
    points = folder / "points.yaml"
    points.write_text("- {label: TRP paper, speedup: 2.2, top1: 90.5}\n"
                      "- {label: LRPET paper, speedup: 1.8, top1: 91}\n")
    out = folder / "report"
    path = report.write_report([runs / "trp", runs / "dense"], out, paper_points=points)
    assert path == out / "README.md"
    return out, path.read_text()


def test_report_of_two_runs_writes_every_plot_and_links_it(runs, two_runs):
    out, markdown = two_runs
    images = linked_images(markdown)
    assert sorted(images) == sorted(p.name for p in out.glob("*.png")) == sorted(
        ["accuracy.png", "accuracy_vs_flops.png", "trp_ranks.png", "trp_spectra.png", "dense_spectra.png"])
    for name in images:
        assert_real_png(out / name)
    for run in ("trp", "dense"):
        assert f"## Run {run}" in markdown and f"`{runs / run}`" in markdown
    assert "no ranks.csv" in markdown.split("## Run dense")[1]  # the dense method logs no ranks: a note, no plot
    assert "the oldest checkpoint kept (step 4)" in markdown  # epochs end at steps 2, 4, 6; 2 are kept


def test_the_rank_table_lists_the_compact_models_low_rank_layers(runs, two_runs):
    markdown = two_runs[1].split("## Run dense")[0]
    compact = lr.load(runs / "trp" / "compact.pt")
    low = {name: m for name, m in compact.named_modules() if isinstance(m, LowRankConv2d)}
    assert low
    for name, m in low.items():
        assert re.search(rf"^\| {re.escape(name)} \| LowRankConv2d \(channel\) \| {m.rank} / \d+ \| [\d,]+ \|",
                         markdown, re.MULTILINE), name
    flops = lr.count(compact, (1, 3, 8, 8)).flops
    assert f"| **total** | | | {flops:,} |" in markdown


def test_the_command_plots_chosen_layers_and_notes_unknown_ones(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main(["report", str(runs / "trp"), "-o", str(out), "--layers", "layer2.0.conv2", "nope"]) == 0
    markdown = (out / "README.md").read_text()
    assert "layer 'nope': not in this run's checkpoint or compact model, skipped" in markdown
    assert "note: trp: layer 'nope': not in this run's checkpoint or compact model, skipped" in capsys.readouterr().out
    assert_real_png(out / "trp_spectra.png")
    # a run directory after --layers is not taken for a layer name and left out unseen
    assert cli.main(["report", str(runs / "trp"), "-o", str(out), "--layers", "conv1", str(runs / "dense")]) == 2
    assert f"lrtrain: error: --layers {runs / 'dense'}: a folder, not a layer name" in capsys.readouterr().err


def test_missing_files_are_skipped_with_a_note(runs, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(runs / "trp" / "metrics.csv", partial)
    markdown = report.write_report([partial], tmp_path / "report").read_text()
    assert linked_images(markdown) == ["accuracy.png"]
    for missing in ("summary.json", "ranks.csv", "compact.pt", "checkpoint"):
        assert f"no {missing}" in markdown


def test_a_tucker2_rank_log_becomes_a_heat_map(tmp_path):
    rows = [{"step": str(s), "layer": layer, "rank": f"[{r}, {r}]", "max_rank": "[16, 16]"}
            for s, r in ((10, 12), (20, 9)) for layer in ("a", "b", "c")]
    report.plot_rank_heatmap(rows, tmp_path / "ranks.png", "tucker2")
    assert_real_png(tmp_path / "ranks.png")


def test_singular_values_drop_the_numerical_zeros_of_a_low_rank_weight():
    torch.manual_seed(0)
    weight = (torch.randn(16, 3) @ torch.randn(3, 8 * 9)).reshape(16, 8, 3, 3)
    s = report.singular_values(weight)
    assert len(s) == 3 and torch.allclose(s, torch.linalg.svdvals(weight.reshape(16, -1))[:3])


def test_a_path_that_is_not_a_run_directory_is_named_in_the_error(runs, tmp_path):
    for bad in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(FileNotFoundError, match=re.escape(str(bad))):
            report.write_report([runs / "trp", bad], tmp_path / "report")
    points = tmp_path / "points.yaml"
    points.write_text("- {label: x, speedup: fast}\n")
    with pytest.raises(ValueError, match="item 1 must be"):
        report.write_report([runs / "trp"], tmp_path / "report", paper_points=points)


def test_a_cut_short_rank_log_and_a_damaged_checkpoint_give_notes_not_errors(runs, tmp_path):
    run = tmp_path / "trp"
    shutil.copytree(runs / "trp", run)
    lines = (run / "ranks.csv").read_text().splitlines()
    (run / "ranks.csv").write_text("\n".join(lines) + "\n4,layer1.0.conv1,")  # a killed writer's last row
    oldest = sorted((run / "checkpoints").glob("step_*.pt"))[0]
    oldest.write_bytes(oldest.read_bytes()[:100])
    markdown = report.write_report([run], tmp_path / "report").read_text()
    assert "trp_ranks.png" in linked_images(markdown) and "cannot read checkpoint" in markdown
    (run / "ranks.csv").write_text(lines[0] + "\n")  # a resume that dropped every row
    markdown = report.write_report([run], tmp_path / "report2").read_text()
    assert "ranks.csv holds no complete row yet" in markdown and "trp_ranks.png" not in linked_images(markdown)


def test_invalid_yaml_paper_points_are_named(tmp_path):
    points = tmp_path / "points.yaml"
    points.write_text("- {label: x, speedup: [unclosed\n")
    with pytest.raises(ValueError, match="points.yaml: not valid YAML"):
        report.load_paper_points(points)


def test_an_unfinished_run_shows_how_far_it_got_and_step_drops_are_found(tmp_path):
    run = tmp_path / "half"
    run.mkdir()
    (run / "config.yaml").write_text("method: {name: lrpet}\ntrain: {epochs: 10}\n")
    rows = [(1, 0.1, 50.0), (2, 0.1, 61.5), (3, 0.01, 70.25), (4, 0.01, 68.0)]
    (run / "metrics.csv").write_text("epoch,step,lr,train_loss,train_acc,test_loss,test_acc\n" + "".join(
        f"{e},{4 * e},{lr},1.0,{acc},1.0,{acc}\n" for e, lr, acc in rows))
    out = report.write_report([run], tmp_path / "report")
    row = next(line for line in out.read_text().splitlines() if line.startswith("| half "))
    assert "| 4/10 (unfinished) | 68.00 (latest) | 70.25 |" in row
    assert report._lr_drops(report._read_csv(run / "metrics.csv")) == [2]  # 0.1 after epoch 2, then 0.01
    assert_real_png(tmp_path / "report" / "accuracy.png")


def test_a_one_epoch_run_is_drawn_as_points_and_a_run_given_twice_is_shown_once(runs, tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    one = [{"epoch": "1", "test_acc": "40.0", "train_acc": "35.0", "lr": "0.1"}]
    report.plot_accuracy({"short": one}, tmp_path / "a.png")
    line = figures[0].axes[0].lines[0]
    assert line.get_marker() == "o" and list(line.get_xdata()) == [1]  # a line of one point would not show
    monkeypatch.undo()
    path = report.write_report([runs / "dense", runs / "trp", str(runs / "dense")], tmp_path / "report")
    markdown = path.read_text()
    assert markdown.count("## Run dense") == 1 and "dense-2" not in markdown
    assert "best top-1: the best epoch-end evaluation of the model as it trained, before that cut" in markdown
    assert markdown.index("## Run dense") < markdown.index("## Run trp")  # in the order first given
    (tmp_path / "taken.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="taken.png is a file: the report is a folder"):
        report.write_report([runs / "dense"], tmp_path / "taken.png")


@pytest.mark.parametrize("item", ["{label: x, speedup: -1, top1: 90}", "{label: x, speedup: 2, top1: .nan}",
                                  "{label: x, speedup: 0, top1: 90}", "{label: x, speedup: 2, top1: 900}",
                                  "{label: [a, b], speedup: 2, top1: 90}"])
def test_paper_points_off_the_plot_and_a_missing_file_are_named(runs, tmp_path, item):
    points = tmp_path / "points.yaml"
    points.write_text(f"- {item}\n")
    with pytest.raises(ValueError, match=r"item 1 must be \{label: text, speedup: a number above 0, top1: 0-100\}"):
        report.load_paper_points(points)
    with pytest.raises(ValueError, match=r"^paper points .*nowhere.yaml: No such file or directory$"):
        report.write_report([runs / "dense"], tmp_path / "report", paper_points=tmp_path / "nowhere.yaml")


@pytest.fixture
def figures(monkeypatch):
    """The figures the report draws, kept instead of written."""
    kept = []
    monkeypatch.setattr(report, "_save", lambda fig, path: kept.append(fig))
    return kept


def _epochs(test, train=None, step=10):
    return [{"epoch": str(e), "step": str(step * e), "lr": "0.1", "test_acc": t, "train_acc": (train or test)[e - 1]}
            for e, t in enumerate(test, 1)]


def test_many_runs_get_one_legend_below_and_a_style_each(figures, tmp_path):
    curves = {f"run {i}": _epochs([str(80.0 + i)] * 3) for i in range(34)}
    report.plot_accuracy(curves, tmp_path / "a.png")
    fig = figures[0]
    assert [ax.get_legend() for ax in fig.axes] == [None, None]
    assert len(fig.legends[0].get_texts()) == 34 and fig.legends[0]._ncols == 3
    styles = {(line.get_color(), line.get_linestyle()) for line in fig.axes[0].lines}
    assert len(styles) == 34  # the colour cycle repeats after ten: then dashed, dotted, ...


def test_a_dip_does_not_flatten_the_zoom_and_nan_is_marked(figures, tmp_path):
    test = [str(88.0 + (e % 3)) for e in range(60)]
    test[30], test[40] = "17.0", "nan"  # SVD + fine-tune's swap epoch; a diverged evaluation
    report.plot_accuracy({"svd": _epochs(test), "noeval": _epochs([""] * 5, ["50"] * 5)}, tmp_path / "a.png")
    test_ax, train_ax = figures[0].axes
    low, high = test_ax.get_ylim()
    assert 80 < low < 88 and high == 91.0
    below, = [line for line in test_ax.lines if line.get_label() == "_below the axis"]
    assert list(below.get_xdata()) == [31] and list(below.get_ydata()) == [low] and not below.get_clip_on()
    bad, = [line for line in test_ax.lines if line.get_label() == "_not finite"]
    assert list(bad.get_xdata()) == [41]
    assert "carets: below the axis" in test_ax.get_title() and "red x: NaN or inf" in test_ax.get_title()
    report.plot_accuracy({"noeval": _epochs([""] * 5, ["50"] * 5)}, tmp_path / "b.png")
    assert [t.get_text() for t in figures[1].axes[0].texts] == ["no test evaluation logged"]


def _fake_run(root, name, metrics=None, summary=None, ranks=None, config="method: {name: trp}\ntrain: {epochs: 4}\n"):
    import json

    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(config)
    if metrics is not None:
        (run / "metrics.csv").write_text(metrics)
    if summary is not None:
        (run / "summary.json").write_text(json.dumps({
            "method": "trp", "model": "resnet20", "epochs": 2, "steps": 20, "final_acc": 90.0, "best_acc": 90.0,
            "speedup": 2.0, "dense": {"flops": 2, "params": 2}, "compact": {"flops": 1, "params": 1}, **summary}))
    if ranks is not None:
        (run / "ranks.csv").write_text(ranks)
    return run


def test_runs_without_data_or_finite_results_are_left_out_with_notes(tmp_path, monkeypatch, figures):
    header = "epoch,step,lr,train_loss,train_acc,test_loss,test_acc\n"
    shown = {}
    monkeypatch.setattr(report, "plot_accuracy_vs_flops", lambda rows, path, title, **kw: shown.update(rows=rows, **kw))
    runs = [_fake_run(tmp_path, "empty", header), _fake_run(tmp_path, "noeval", header + "1,10,0.1,1,50,,\n"),
            _fake_run(tmp_path, "nan", header + "1,10,0.1,1,50,1,nan\n2,20,0.1,1,inf,1,60\n", {"final_acc": None}),
            _fake_run(tmp_path, "inf", header + "1,10,0.1,1,50,1,55\n", {"speedup": float("inf")}),
            _fake_run(tmp_path, "r56", header + "1,10,0.1,1,50,1,55\n", {"model": "resnet56"}),
            _fake_run(tmp_path, "r20", header + "1,10,0.1,1,50,1,55\n", {})]
    markdown = report.write_report(runs, tmp_path / "report").read_text()
    notes = {run.name: markdown.split(f"## Run {run.name}")[1].split("## Run")[0] for run in runs}
    assert "metrics.csv holds no epoch yet: not in the accuracy plot" in notes["empty"]
    assert "no test evaluation logged" in notes["noeval"]
    assert "test top-1 is NaN or infinite at epoch(s) 1" in notes["nan"]
    assert "train top-1 is NaN or infinite at epoch(s) 2" in notes["nan"]
    for name in ("nan", "inf"):
        assert "is not a finite number: left out of the accuracy-vs-FLOPs plot" in notes[name]
    legend = [t.get_text().split(" (")[0] for t in figures[0].legends[0].get_texts()]
    assert legend == ["noeval", "nan", "inf", "r56", "r20"]  # no entry without data
    assert [row["method"] for row in shown["rows"]] == ["r56 (trp)", "r20 (trp)"] and shown["panels"] == "model"
    report.write_report(runs[-1:], tmp_path / "one")
    assert shown["panels"] is None  # one model: one panel
    assert not (tmp_path / "empty_only").exists()
    report.write_report(runs[:1], tmp_path / "empty_only")
    assert not (tmp_path / "empty_only" / "accuracy.png").exists()  # every curve empty: no figure


def test_names_keep_their_letters_and_files_get_ascii_unique_names(tmp_path, monkeypatch, figures):
    header = "epoch,step,lr,train_loss,train_acc,test_loss,test_acc\n1,10,0.1,1,50,1,55\n"
    runs = [_fake_run(tmp_path, n, header, ranks="step,layer,rank,max_rank\n5,a,2,4\n")
            for n in ("α", "β", "r110 lrpet ü", "-x-")]
    runs.append(_fake_run(tmp_path / "other", "α", header, ranks="step,layer,rank,max_rank\n5,a,2,4\n"))
    markdown = report.write_report(runs, tmp_path / "report").read_text()
    assert sorted(image for image in linked_images(markdown) if image.endswith("_ranks.png")) == [
        "r110-lrpet-u_ranks.png", "run-2_ranks.png", "run-3_ranks.png", "run_ranks.png", "x_ranks.png"]
    for label in ("α", "β", "r110 lrpet ü", "-x-", "α (2)"):
        assert f"## Run {label}\n" in markdown and f"\n| {label} | trp |" in markdown
    assert [t.get_text() for t in figures[0].legends[0].get_texts()] == [
        f"{n} (unfinished: 1/4)" for n in ("α", "β", "r110 lrpet ü", "-x-", "α (2)")]
    assert figures[1].axes[0].get_title() == "α: rank during training (unfinished: 1/4 epochs)"


def test_a_heat_map_magnifies_an_early_collapse_and_says_what_its_colours_are(tmp_path, figures):
    rows = [{"step": str(s), "layer": layer, "rank": str(r), "max_rank": "16"}
            for s, r in ((5, 14), (10, 9), (15, 5), (900, 4)) for layer in ("a", "b")]
    report.plot_rank_heatmap(rows, tmp_path / "r.png", "trp", steps_per_epoch=10, last_step=2000)
    ax = figures[0].axes[0]
    assert ax.get_xscale() == "symlog" and ax.get_xlim() == pytest.approx((0, 200))
    right, bar = ax.child_axes
    assert [t.get_text() for t in right.get_yticklabels()] == ["4/16", "4/16"]
    assert bar.get_ylabel() == "rank / max rank"
    spread = [{**r, "step": str(s)} for r, s in zip(rows, (100, 100, 800, 800, 1200, 1200, 1900, 1900))]
    report.plot_rank_heatmap(spread, tmp_path / "r.png", "lrpet", last_step=2000)
    assert figures[1].axes[0].get_xscale() == "linear"
    tucker = [{"step": "5", "layer": "a", "rank": "[9, 9]", "max_rank": "[16, 16]"}]
    report.plot_rank_heatmap(tucker, tmp_path / "t.png", "tucker2")
    assert figures[2].axes[0].child_axes[1].get_ylabel() == "rank / max rank (tucker2: mean of the two modes)"
    assert [t.get_text() for t in figures[2].axes[0].child_axes[0].get_yticklabels()] == ["9x9/16x16"]


def test_a_deep_networks_heat_map_stays_readable(tmp_path, figures):
    rows = [{"step": "5", "layer": f"layer{i}", "rank": "2", "max_rank": "4"} for i in range(110)]
    report.plot_rank_heatmap(rows, tmp_path / "r.png", "r110", last_step=10)
    fig = figures[0]
    ax = fig.axes[0]
    assert fig.get_size_inches()[1] == 12
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[:2] == ["layer0", "layer2"] and len(labels) == 55
    bar, = ax.child_axes  # no final ranks beside rows that are not all named
    assert bar.get_position().height * 12 < 4


def test_a_heat_map_without_metrics_ends_at_the_summarys_last_step(tmp_path, figures):
    run = _fake_run(tmp_path, "nometrics", summary={"steps": 400}, ranks="step,layer,rank,max_rank\n5,a,2,4\n")
    report.write_report([run], tmp_path / "report")
    assert figures[0].axes[0].get_xlim() == pytest.approx((0, 400))


def test_spectra_name_the_checkpoints_step_and_show_it_when_it_is_the_compact_model(runs, tmp_path, figures):
    run = tmp_path / "dense"
    shutil.copytree(runs / "dense", run)
    for old in sorted((run / "checkpoints").glob("step_*.pt"))[:-1]:
        old.unlink()  # only the last step's checkpoint kept: the compact model's weights
    markdown = report.write_report([run], tmp_path / "report").read_text()
    ax = figures[-1].axes[0]
    before, after = ax.lines[:2]
    assert before.get_label() == "before: checkpoint at step 6 of 6 (the same)" and before.get_linewidth() == 5
    assert after.get_label() == "after (compact)" and ax.get_title().endswith(": dense")
    assert ax.get_xlim() == (1, min(16, 3 * 9))  # conv1: 16 × 3·3·3
    assert "has the compact model's singular values in" in markdown
