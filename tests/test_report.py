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
