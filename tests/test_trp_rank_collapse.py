"""benchmarks/trp_rank_collapse.py: reading rank histories, ours and a log of the official code's."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import trp_rank_collapse as trc  # noqa: E402


def test_rank_history_holds_each_rank_until_its_layers_next_row(tmp_path):
    (tmp_path / "ranks.csv").write_text("step,layer,rank,max_rank\n5,a.0,7,16\n5,b.0,9,32\n10,a.0,6,16\n10,b.0,8,32\n"
                                        "15,a.0,5,16\n20,b.0,7")  # step 15 changed a.0 only; step 20's row cut off
    layers, history = trc.rank_history(tmp_path)
    assert layers == ["a.0", "b.0"]
    assert history == {5: [7, 9], 10: [6, 8], 15: [5, 8]}
    assert trc.at(history, 4) is None and trc.at(history, 9) == [7, 9] and trc.at(history, 12) == [6, 8] and trc.at(history, 99) == [5, 8]
    assert trc.stage_means(layers, history[10]) == {"a": 6.0, "b": 8.0}
    (tmp_path / "metrics.csv").write_text("epoch,step,test_acc\n1,20,50.0\n2,40,60.0\n")  # ranks held to step 40
    assert trc.rank_history(tmp_path)[1] == {5: [7, 9], 10: [6, 8], 15: [5, 8], 40: [5, 8]}


def test_official_log_skips_comments_and_reads_steps(tmp_path):
    log = tmp_path / "official.log"
    log.write_text("# how it was made\n0 [14, 13] 0s\nloss 0 2.49\n5 [12, 11] 4s\n")
    assert trc.official_history(log) == {0: [14, 13], 5: [12, 11]}


def test_the_plot_lines_up_the_official_curve_and_shows_rank_over_max(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    runs = []
    for name, top in (("r_nuclear", 16), ("r", 16), ("s", 48)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ranks.csv").write_text(f"step,layer,rank,max_rank\n5,a.0,8,{top}\n10,a.0,4,{top}\n")
        runs.append(tmp_path / name)
    (tmp_path / "official.log").write_text("0 [8]\n5 [4]\n")
    figures = []
    monkeypatch.setattr(trc, "speedup_at", lambda run, ranks: 1.0)
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, *a, **k: figures.append(fig))
    trc.main(["--runs", *map(str, runs), "--official-log", str(tmp_path / "official.log"), "--official-label", "off",
              "--out", str(tmp_path / "out")])
    lines = {line.get_label(): line for line in figures[0].axes[0].lines}
    official = next(line for label, line in lines.items() if label.startswith("off"))
    assert list(official.get_xdata()) == [5, 10] and "step + 5" in official.get_label()
    assert list(lines["r"].get_ydata()) == [0.5, 0.25] and list(lines["s"].get_ydata()) == [8 / 48, 4 / 48]
    assert lines["r_nuclear"].get_linewidth() > lines["r"].get_linewidth()  # drawn under the same curve
    assert lines["r_nuclear"].get_color() == lines["r"].get_color()
