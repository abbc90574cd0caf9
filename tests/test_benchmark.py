"""The resumable benchmark harness and the CPU equal-budget benchmark's run list."""

import copy
import csv
import importlib.util
import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

import lrtrain as lr
from lrtrain import benchmark
from lrtrain.methods import create_method

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts import each other


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cpu_budget = _load_script("cpu_budget")

TINY = {
    "seed": 0,
    "model": {"name": "resnet20"},
    "data": {"name": "sample", "train_size": 64, "test_size": 32, "image_size": 8, "batch_size": 32,
             "eval_batch_size": 32},
    "optim": {"lr": 0.05},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
    "train": {"epochs": 2, "device": "cpu", "keep_checkpoints": 1, "progress": False},
}


def _specs():
    chosen = {"dense", "lrpet"}
    return [s for s in cpu_budget.specs(copy.deepcopy(TINY)) if s.name in chosen]


def _final(root, name):
    return json.loads((root / name / "summary.json").read_text())


def test_interrupted_runs_resume_to_the_uninterrupted_result_and_tabulate(tmp_path):
    torch.manual_seed(0)
    straight = tmp_path / "straight"
    assert benchmark.run_all(_specs(), straight) == ["dense", "lrpet"]
    # a time limit of 0 s stops the first run after its first epoch, resumably
    stopped = tmp_path / "stopped"
    assert benchmark.run_all(_specs(), stopped, time_limit=0.0) == []
    assert not (stopped / "dense" / "summary.json").exists()
    assert benchmark.run_all(_specs(), stopped) == ["dense", "lrpet"]
    for name in ("dense", "lrpet"):
        a, b = _final(straight, name), _final(stopped, name)
        assert a["final_acc"] == b["final_acc"] and a["final_loss"] == b["final_loss"]
        assert a["compact"] == b["compact"]

    rows = benchmark.collect(_specs(), stopped, "pytest", threads=1, latency_iters=2)
    stem = tmp_path / "results" / "budget"
    benchmark.write_table(rows, stem, "tiny", "notes")
    with open(stem.with_suffix(".csv")) as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == benchmark.ROW_FIELDS
    assert [r["method"] for r in table] == ["dense", "LRPET (ET + BN rect.)"]
    assert float(table[1]["flops_speedup"]) >= 1 / cpu_budget.BUDGET - 1e-6
    assert float(table[1]["cpu_speedup_b32"]) > 0 and float(table[1]["cpu_deployed_speedup_b32"]) > 0
    assert table[0]["cpu_speedup_b32"] == table[0]["cpu_deployed_speedup_b32"] == "1.0"  # dense: not timed
    assert "| LRPET (ET + BN rect.) |" in stem.with_suffix(".md").read_text()
    assert "Over seeds" not in stem.with_suffix(".md").read_text()  # each method trained once
    benchmark.plot(rows, stem.with_suffix(".png"), "tiny")
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _compact_after_one_projection(method):
    if hasattr(method, "swap"):
        method.swap()
    elif hasattr(method, "project"):
        method.project()
    return method.finalize()


@pytest.mark.parametrize("name,label,params", [m for m in cpu_budget.METHODS if m[0] != "dense"],
                         ids=[m[0] for m in cpu_budget.METHODS if m[0] != "dense"])
def test_every_low_rank_run_meets_the_budget(name, label, params):
    model = lr.models.create("resnet20")
    dense = lr.count(model).flops
    params = dict(params)
    method = create_method(params.pop("name"), model, **params)
    method.setup(steps_per_epoch=10, total_steps=100)
    compact = _compact_after_one_projection(method)
    assert lr.count(compact).flops <= cpu_budget.BUDGET * dense
    assert dense / lr.count(compact).flops >= 2.17


def test_only_the_elrt_runs_train_channels_last():
    chosen = {s.name: s.recipe["train"]["channels_last"] for s in cpu_budget.specs()}
    assert {n for n, cl in chosen.items() if cl} == {"elrt_tucker2", "elrt_tucker2_noorth"}
    assert all(cl is False for n, cl in chosen.items() if not n.startswith("elrt"))


def test_result_files_and_speed_sections_are_copied_to_out(tmp_path, monkeypatch):
    import speed

    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    report = speed.Report(tmp_path / "results" / "speed_x.md", ["# header"], deadline=None)
    report.add(["## A", "a"])
    report.add(["## B", "first"])
    report.update(["## B", "fuller"])
    text = "# header\n\n## A\na\n\n## B\nfuller\n"
    assert (tmp_path / "results" / "speed_x.md").read_text() == text
    assert (tmp_path / "out" / "speed_x.md").read_text() == text


def test_elrt_step_records_the_commit_given_and_copies_its_result_to_out(tmp_path, monkeypatch):
    import elrt_step

    monkeypatch.setattr(elrt_step, "RESULTS", tmp_path / "results")
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    elrt_step.main(["--model", "resnet20", "--batch", "2", "--warmup", "0", "--iters", "1", "--reductions", "0.5",
                    "--multiples", "1", "8", "--commit", "abc1234"])
    name = "elrt_step_cpu_resnet20_b2_multiples1-8.md"  # each option that changes the measurement is named
    text = (tmp_path / "out" / name).read_text()
    assert "- commit: abc1234" in text and text == (tmp_path / "results" / name).read_text()
    ranks = {row[0]: row[1].split() for row in ([c.strip() for c in line.strip("|").split("|")]
                                                 for line in text.splitlines() if line.startswith("| ELRT"))}
    assert all(int(r) % 8 == 0 for r in ranks["ELRT tucker2 −50% FLOPs, ranks ×8"])
    assert any(int(r) % 8 for r in ranks["ELRT tucker2 −50% FLOPs"])


def test_rank_multiples_tabulates_aligned_ranks_beside_free_ones_and_marks_an_unreachable_multiple(tmp_path):
    import rank_multiples

    weights = tmp_path / "dense.pt"
    torch.manual_seed(0)
    lr.export.save(lr.models.create("resnet20"), weights, "resnet20", 10)
    out = tmp_path / "rm.md"
    rank_multiples.main(["--weights", str(weights), "--schemes", "channel", "--multiples", "1", "8", "16",
                         "--batches", "1", "--repeats", "1", "--iters", "1", "--rounds", "1", "--out", str(out)])
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in out.read_text().splitlines()
             if line.startswith("| ")]
    rows = {row[0]: row for row in cells if len(row) == 6}  # the ranks table
    times = {row[0]: row for row in cells if len(row) == 2}  # the timing table, one batch size
    sweep = next(row for row in cells if row[0] == "64@8²")[2].split()
    assert len(sweep) == 64 and all(float(v) > 0 for v in sweep)
    assert all(int(r) % 8 == 0 for r in rows["channel, multiple 8"][1].split())
    assert any(int(r) % 8 for r in rows["channel, multiple 1"][1].split())
    assert rows["channel, multiple 16"][1] == "unreachable"
    for label in ("channel, multiple 1", "channel, multiple 8"):  # same budget: 2.2x fewer FLOPs either way
        assert float(rows[label][3].rstrip("x")) >= 1 / 0.45 - 0.01
    assert times["dense"][1].endswith("ms, 1.00x") and "ms," in times["channel, multiple 8"][1]


class _Report:
    """Collects speed.py's sections; its budget runs out once `over` is set."""

    def __init__(self):
        self.sections, self.over = [], False

    def over_budget(self):
        return self.over

    def add(self, lines):
        self.sections.append(lines)

    def update(self, lines):
        self.sections[-1] = lines


def test_speed_inference_writes_each_column_and_stops_at_the_budget(monkeypatch):
    import speed

    args = Namespace(models=["resnet20", "resnet56"], cpu_batches=[1, 32], threads=1, rounds=1, iters=1,
                     gpu_batch=2, budget=60, runs_root=Path("/nonexistent"), fold_bn=True)
    report = _Report()

    measured = []

    sizes = []

    def first_column_spends_the_budget(nets, size, args):
        measured.extend(nets.values())
        sizes.append(size)
        report.over = True
        return {label: 1e-3 for label in nets}

    monkeypatch.setattr(speed, "compact_models", lambda model, root: [("half", speed.models.create(model), "x")])
    monkeypatch.setattr(speed, "cpu_latencies", first_column_spends_the_budget)
    speed.inference(args, torch.device("cpu"), report)
    first, skipped = report.sections
    header = next(line for line in first if line.startswith("| method"))
    assert "CPU b1 ms (speedup)" in header and "CPU b32" not in header and "budget ran out" in first[2]
    assert "BatchNorm folded into the convs" in first[2] and len(measured) == 2
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for net in measured for m in net.modules())
    assert skipped == ["(B.3 of resnet56 skipped: the 60 s budget was spent)"]
    report, args.models = _Report(), ["resnet18"]  # an image-folder model: timed at its own 224×224
    speed.inference(args, torch.device("cpu"), report)
    assert sizes == [(1, 3, 32, 32), (1, 3, 224, 224)]
    assert report.sections[0][0] == "## B.3 Inference latency: resnet18 at 224×224, compact vs dense"

    # The GPU columns leave out the nets not prepared (compiled) in time; bf16 on the CPU stands in here.
    nets = {"dense": speed.models.create("resnet20").eval(), "half": speed.models.create("resnet20").eval()}
    checks = Namespace(over_budget=iter([False, True]).__next__)
    assert list(speed.gpu_latencies(nets, (2, 3, 32, 32), torch.device("cpu"), args, False, checks)) == ["dense"]


def test_speed_writes_one_file_per_section_and_a_later_run_of_one_keeps_the_others(tmp_path, monkeypatch):
    import speed

    monkeypatch.setattr(speed, "RESULTS", tmp_path)

    def fake(label):
        return lambda args, device, report: report.add([f"## {label} measured at {args.commit}"])

    monkeypatch.setattr(speed, "SECTIONS", {name: (fake(name), f"{name} title") for name in speed.SECTIONS})
    speed.main(["--device", "cpu", "--threads", "1", "--commit", "first"])
    speed.main(["--device", "cpu", "--threads", "1", "--sections", "inference", "--commit", "second"])
    train, inference = (tmp_path / "speed_train_cpu.md").read_text(), (tmp_path / "speed_inference_cpu.md").read_text()
    assert train.startswith("# train title") and "## train measured at first" in train
    assert "- commit: second" in inference and "## inference measured at second" in inference
    assert "first" not in inference and (tmp_path / "speed_throughput_cpu.md").exists()
    index = (tmp_path / "speed.md").read_text()
    assert "[speed_train_cpu.md](speed_train_cpu.md)" in index and "speed_inference_cpu.md" in index


def test_train_throughput_times_other_compile_modes_on_top_of_the_devices_defaults():
    import train_throughput

    rows = dict(train_throughput.settings(torch.device("cuda"), ["amp"], ["reduce-overhead"]))
    assert rows["default"] == {"channels_last": True, "amp": True, "compile": True}
    assert rows["torch.compile mode reduce-overhead"] == {**rows["default"], "compile_mode": "reduce-overhead"}
    assert rows["bf16 autocast off"]["amp"] is False and "compile_mode" not in rows["bf16 autocast off"]
    cpu = dict(train_throughput.settings(torch.device("cpu"), [], ["max-autotune"]))
    assert cpu["torch.compile mode max-autotune"] == {"channels_last": True, "amp": False, "compile": True,
                                                      "compile_mode": "max-autotune"}  # the trainer's CPU defaults
    flipped = dict(train_throughput.settings(torch.device("cpu"), ["channels_last", "amp"]))
    assert flipped["channels_last off + bf16 autocast on"] == {"channels_last": False, "amp": True, "compile": False}


def test_speed_deploy_section_sets_each_compact_model_beside_its_deployed_form(monkeypatch):
    import speed
    from lrtrain.deployment import LayerChoice

    compact = speed.models.create("resnet20")  # stands in for a compact model
    monkeypatch.setattr(speed, "compact_models", lambda model, root: [("half", compact, "x")])
    calls = []

    def fake_deploy(net, input_size, layout="as_is"):
        calls.append((input_size, layout))
        return net, [LayerChoice("a", 4, input_size, 1.0, 0.5), LayerChoice("b", 4, input_size, 1.0, 2.0)]

    monkeypatch.setattr(speed, "deploy", fake_deploy)
    monkeypatch.setattr(speed, "cpu_latencies", lambda nets, batch, args: {
        label: {"dense": 2e-3, "half": 4e-3}.get(label, 1e-3) for label in nets})
    args = Namespace(models=["resnet20"], cpu_batches=[1, 32], threads=1, rounds=1, iters=1, budget=None,
                     runs_root=Path("/nonexistent"))
    report = _Report()
    speed.deployed(args, torch.device("cpu"), report)
    (section,) = report.sections
    # the dense model and each compact one deployed at each batch size, each in its faster layout
    assert calls == [((b, 3, 32, 32), "auto") for b in (1, 1, 32, 32)]
    rows = [line for line in section if line.startswith("| b") and not line.startswith("| batch")]
    assert len(rows) == 8
    assert rows[1].startswith("| b1 | dense, deployed | — | contiguous |") and rows[1].endswith("| 1.00 | 2.00x |")
    assert rows[2].startswith("| b1 | half | — | contiguous |") and rows[2].endswith("| 4.00 | 0.50x |")
    assert rows[3].startswith("| b1 | half, deployed | 1/2 |") and rows[3].endswith("| 1.00 | 2.00x |")


def test_methods_trained_with_several_seeds_get_their_spread(tmp_path):
    base = {k: None for k in benchmark.ROW_FIELDS}
    rows = [{**base, "model": "resnet56", "method": "LRPET", "top1_final": acc, "device": "gpu", "commit": "c",
             "date": "d", "command": "x"} for acc in (93.0, 93.4, 92.9)]
    rows.append({**rows[0], "method": "dense", "top1_final": 93.5})
    stem = tmp_path / "table"
    benchmark.write_table(rows, stem, "seeds", columns=["model", "method", "top1_final"])
    text = stem.with_suffix(".md").read_text()
    assert "| resnet56 | LRPET | 3 | 93.10 | 0.26 | 92.90 | 93.40 |" in text
    assert "| resnet56 | dense | 1 |" not in text.split("## Over seeds")[1]


def test_provenance_shared_by_every_row_is_said_once_else_per_run(tmp_path):
    base = {k: None for k in benchmark.ROW_FIELDS}
    rows = [{**base, "run": run, "method": run, "top1_final": 90.0, "device": "gpu", "commit": code, "date": "d",
             "command": "python x.py"} for run, code in (("dense", "aaa1111"), ("trp", "bbb2222, aaa1111"))]
    stem = tmp_path / "table"
    benchmark.write_table(rows, stem, "provenance", columns=["method", "top1_final"])
    lines = stem.with_suffix(".md").read_text().splitlines()
    assert "Device: gpu." in lines and "Command: `python x.py`." in lines
    assert "Commit, per run: dense `aaa1111`; trp `bbb2222, aaa1111`." in lines


def test_plot_styles_a_method_once_and_lists_it_once_in_one_legend_below(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    rows = [{"method": m, "flops_speedup": s, "top1_final": a}
            for m, s, a in [("A", 2.0, 90.0), ("A", 2.1, 90.5), ("B", 3.0, 89.0), ("dense", 1.0, 92.0)]]
    benchmark.plot(rows, tmp_path / "p.png", "t")
    fig = figures[0]
    ax = fig.axes[0]
    assert ax.get_legend() is None
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["A", "B", "dense (92.00%)"]
    a1, a2, b = ax.collections
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    assert tuple(a1.get_facecolor()[0]) == tuple(a2.get_facecolor()[0]) == to_rgba(cycle[0])
    assert tuple(b.get_facecolor()[0]) == to_rgba(cycle[1])  # the next colour: a styled method draws none


def test_paper_points_are_neutral_and_joined_to_every_row_compared_with_them(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex, to_rgba

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    paper = {"paper_top1": 90.5, "paper_speedup": 2.17}
    rows = [{"method": f"m{i}", "flops_speedup": 1.5 + i / 3, "top1_final": 80.0 + i, **(paper if i in (3, 6) else {})}
            for i in range(9)] + [{"method": "dense", "flops_speedup": 1.0, "top1_final": 92.0}]
    points = [{"label": "m3 (paper)", "speedup": 2.17, "top1": 90.5}, {"label": "other (paper)", "speedup": 4, "top1": 88}]
    benchmark.plot(rows, tmp_path / "p.png", "t", paper_points=points, colours={"m0": "tab:blue"})
    ax = figures[0].axes[0]
    hollow = [c for c in ax.collections if len(c.get_facecolor()) == 0]
    assert [tuple(c.get_offsets()[0]) for c in hollow] == [(2.17, 90.5), (4, 88)]
    assert all(tuple(c.get_edgecolor()[0]) == to_rgba("black") for c in hollow)  # not the first row's colour
    dotted = [line for line in ax.lines if line.get_linestyle() == ":"]
    assert sorted(tuple(line.get_xydata()[1]) for line in dotted) == [(2.5, 83.0), (3.5, 86.0)]
    filled = [to_hex(c.get_facecolor()[0]) for c in ax.collections if len(c.get_facecolor())]
    assert "#7f7f7f" not in filled  # the dense line's grey
    assert len(set(filled)) == 9 - 1  # eight colours left for nine methods


def test_a_panel_without_runs_says_so(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    rows = [{"method": "A", "model": "r20", "flops_speedup": 2.0, "top1_final": 90.0}]
    points = [{"label": "A (paper)", "model": "r56", "speedup": 2.2, "top1": 93.0},
              {"label": "anywhere (paper)", "speedup": 3, "top1": 89.0}]
    benchmark.plot(rows, tmp_path / "p.png", "t", paper_points=points, panels="model", started={"r56": 3})
    r20, r56 = figures[0].axes[:2]
    assert r20.get_title() == "t: r20" and "no finished run yet (3 started)" in r56.get_title()
    assert sorted(t.get_text() for t in r56.texts) == ["A (paper)", "anywhere (paper)"]  # a model-free point in both
    assert [t.get_text() for t in r20.texts] == ["anywhere (paper)"]


def test_plot_of_runs_at_one_budget_does_not_magnify_their_tiny_speedup_differences(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    rows = [{"method": m, "flops_speedup": s, "top1_final": 88.0} for m, s in [("A", 2.222), ("B", 2.231)]]
    benchmark.plot(rows, tmp_path / "p.png", "t")
    left, right = figures[0].axes[0].get_xlim()
    assert left == pytest.approx(2.2265 / 1.1) and right == pytest.approx(2.2265 * 1.1)
    benchmark.plot([{**rows[0], "flops_speedup": 1.5}, rows[1]], tmp_path / "q.png", "t")
    left, right = figures[1].axes[0].get_xlim()  # spread points: matplotlib's own margins
    assert 1.4 < left < 1.5 and 2.231 < right < 2.3


def test_labels_of_nearby_paper_points_cover_no_label_and_no_marker_and_lead_to_their_point(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    rows = [{"method": m, "flops_speedup": s, "top1_final": a}
            for m, s, a in [("ours", 2.0, 90.0), ("x", 2.18, 85.1), ("y", 2.21, 85.2)]]
    paper = [{"label": "TRP channel (paper)", "speedup": 2.17, "top1": 85.05},  # at the panel's bottom
             {"label": "LRPET (paper)", "speedup": 2.20, "top1": 85.07},
             {"label": "TRP spatial (paper)", "speedup": 2.16, "top1": 85.03},
             {"label": "far (paper)", "speedup": 4.0, "top1": 85.0}]
    benchmark.plot(rows, tmp_path / "p.png", "t", paper_points=paper)
    fig = figures[0]
    fig.canvas.draw()
    ax = fig.axes[0]
    boxes = {t.get_text(): Text.get_window_extent(t) for t in ax.texts}  # the text, without its leader
    assert len(boxes) == 4
    labels = list(boxes.values())
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            assert not a.overlaps(b)
    panel = ax.get_window_extent()
    assert all(panel.y0 <= b.y0 and b.y1 <= panel.y1 and panel.x0 <= b.x0 and b.x1 <= panel.x1 for b in labels)
    markers = [ax.transData.transform(xy) for c in ax.collections for xy in c.get_offsets()]
    for box in labels:
        assert not any(box.x0 - 2 < x < box.x1 + 2 and box.y0 - 2 < y < box.y1 + 2 for x, y in markers)
    for t, p in zip(sorted(ax.texts, key=lambda t: t.get_text()), sorted(paper, key=lambda p: p["label"])):
        assert t.xy == (p["speedup"], p["top1"]) and t.arrow_patch is not None  # a leader line to its own point


def test_crowded_markers_get_a_zoomed_inset_and_spread_ones_none(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    crowd = [("a", 2.17, 90.5), ("b", 2.2, 90.45), ("c", 2.22, 90.4), ("d", 2.0, 90.3)]
    rows = [{"method": m, "flops_speedup": s, "top1_final": a} for m, s, a in [*crowd, ("e", 4.0, 85.0), ("f", 6, 84)]]
    benchmark.plot(rows, tmp_path / "p.png", "t")
    ax = figures[0].axes[0]
    inset, = ax.child_axes
    left, right = inset.get_xlim()
    low, high = inset.get_ylim()
    assert left < 2.17 and 2.22 < right < 4 and low < 90.4 and 90.5 < high < 91
    assert len(inset.collections) == len(rows)
    benchmark.plot([rows[0], *rows[4:]], tmp_path / "q.png", "t")
    assert figures[1].axes[0].child_axes == []


def test_a_cuda_profile_counts_each_kernel_once():
    from types import SimpleNamespace

    import speed
    from torch.autograd import DeviceType

    # a conv op whose self device time is its kernel's, and that kernel as an event of its own
    op = SimpleNamespace(device_type=DeviceType.CPU, self_device_time_total=40.0, self_cpu_time_total=7.0)
    kernel = SimpleNamespace(device_type=DeviceType.CUDA, self_device_time_total=40.0, self_cpu_time_total=0.0)
    copy_kernel = SimpleNamespace(device_type=DeviceType.CUDA, self_device_time_total=5.0, self_cpu_time_total=0.0)
    assert speed.profiled_total_us([op, kernel, copy_kernel], cuda=True) == 45.0
    assert speed.profiled_total_us([op, kernel, copy_kernel], cuda=False) == 7.0
    parts = speed.Breakdown({"3×3": (1e6, 0.0)}, 1.0)  # no kernel time traced: a dash, not a ZeroDivisionError
    assert parts.rows()[0][-1] == "—" and "3×3 at —" in parts.versus(parts)


def test_more_methods_than_the_default_colours_get_a_colour_each(tmp_path, monkeypatch):
    """ResNet-20's eleven methods beside dense shared colours (SVD + fine-tune and ELRT channel)."""
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    rows = [{"method": f"m{i}", "flops_speedup": 1.5 + i / 4, "top1_final": 80.0 + i} for i in range(11)]
    benchmark.plot([*rows, {"method": "dense", "flops_speedup": 1.0, "top1_final": 92.0}], tmp_path / "p.png", "t")
    colours = [tuple(c.get_facecolor()[0]) for c in figures[0].axes[0].collections]
    assert len(colours) == 11 and len(set(colours)) == 11
    assert all(abs(r - g) + abs(g - b) > 0.01 for r, g, b, _ in colours)  # no grey: that is the dense line's
