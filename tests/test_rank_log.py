"""ranks.csv: a row where a layer's rank changes, read back as every projection's ranks."""

import pytest
import torch

from lrtrain import report
from lrtrain.train.rank_log import RankLog, changes, read


def rows(*triples):
    return [{"step": s, "layer": layer, "rank": r, "max_rank": 16} for s, layer, r in triples]


def projections():
    """Every projection's rows, as a method logs them: two layers projected every 5 steps."""
    ranks = {5: (14, 12), 10: (12, 12), 15: (12, 12), 20: (11, 12), 25: (11, 12), 30: (11, 9)}
    return rows(*[(s, layer, r) for s, pair in ranks.items() for layer, r in zip(("a", "b"), pair)])


def test_only_rows_that_change_a_rank_are_written(tmp_path):
    log = RankLog(tmp_path / "ranks.csv")
    every = projections()
    for step in sorted({r["step"] for r in every}):  # one append per projection, as the trainer drains them
        log.append([r for r in every if r["step"] == step])
    written = [(int(r["step"]), r["layer"], int(r["rank"])) for r in read(tmp_path / "ranks.csv")]
    assert written == [(5, "a", 14), (5, "b", 12), (10, "a", 12), (20, "a", 11), (30, "b", 9)]
    assert (tmp_path / "ranks.csv").read_text().count("step,layer") == 1


def test_a_change_of_max_rank_alone_is_a_change():
    assert [r["step"] for r in changes([*rows((5, "a", 4)), {"step": 10, "layer": "a", "rank": 4,
                                                             "max_rank": 8}])] == [5, 10]


def test_resume_drops_later_rows_and_rewrites_a_file_of_every_projection(tmp_path):
    path = tmp_path / "ranks.csv"
    path.write_text("step,layer,rank,max_rank\n" + "".join(
        f"{r['step']},{r['layer']},{r['rank']},{r['max_rank']}\n" for r in projections()) + "35,a,1")
    log = RankLog(path)
    log.resume(20)
    assert [(int(r["step"]), r["layer"]) for r in read(path)] == [(5, "a"), (5, "b"), (10, "a"), (20, "a")]
    log.append(rows((25, "a", 11), (25, "b", 12)))  # the ranks the resumed file ends with: nothing new
    log.append(rows((30, "b", 9)))
    assert [(int(r["step"]), r["layer"]) for r in read(path)][-2:] == [(20, "a"), (30, "b")]
    log.restart()
    assert read(path) is None


def test_cut_short_and_half_written_rows_are_not_read(tmp_path):
    path = tmp_path / "ranks.csv"
    path.write_text('step,layer,rank,max_rank\n5,a,4,16\n5,b,"[3, 3]","[8, 8]"\n10,a,3,\n1')
    assert [r["layer"] for r in read(path)] == ["a", "b"]
    path.write_text("step,layer,rank,max_rank\n5,a,6,16\n8,a,4,1")  # "8,a,4,16" cut inside its last field
    assert [r["step"] for r in read(path)] == ["5"]


def test_a_rank_pair_is_written_as_a_list_whatever_its_type(tmp_path):
    log = RankLog(tmp_path / "ranks.csv")
    log.append([{"step": 0, "layer": "a", "rank": (2, 9), "max_rank": (3, 16)}])
    log.append([{"step": 5, "layer": "a", "rank": [2, 9], "max_rank": [3, 16]}])  # the same ranks
    assert read(tmp_path / "ranks.csv") == [{"step": "0", "layer": "a", "rank": "[2, 9]", "max_rank": "[3, 16]"}]


def test_a_trp_run_resumed_mid_training_writes_the_uninterrupted_runs_ranks_csv(tmp_path):
    from lrtrain.config import resolve
    from lrtrain.train import Trainer

    def run(name, **fit):
        torch.manual_seed(0)
        cfg = resolve({"out_dir": str(tmp_path / name), "model": {"name": "resnet20"},
                       "data": {"name": "sample", "train_size": 64, "test_size": 32, "image_size": 8,
                                "num_classes": 4, "batch_size": 16},
                       "optim": {"lr": 0.05}, "schedule": {"name": "constant"},
                       "train": {"epochs": 3, "progress": False, "device": "cpu"},
                       "method": {"name": "trp", "period": 1, "energy": 0.9}})
        Trainer(cfg).fit(**fit)
        return (tmp_path / name / "ranks.csv").read_text()

    whole = run("whole")
    assert len({line.split(",")[0] for line in whole.splitlines()[1:]}) > 2  # ranks changed at several steps
    run("parts", until_step=6)  # mid-epoch 2: the checkpoint's step; rows past it are logged again
    assert run("parts", resume=True) == whole


def test_the_grid_holds_each_rank_until_the_layers_next_row():
    for given in (projections(), changes(projections())):
        layers, steps, grid = report.rank_grid([{k: str(v) for k, v in r.items()} for r in given])
        assert layers == ["a", "b"] and steps == [0, 5, 10, 20, 30]  # from step 0: dense until projected
        assert grid.mul(16).tolist() == [[16, 14, 12, 11, 11], [16, 12, 12, 12, 9]]
    layers, steps, grid = report.rank_grid([{"step": "8", "layer": "late", "rank": "2", "max_rank": "4"},
                                            *[{k: str(v) for k, v in r.items()} for r in projections()]])
    assert layers == ["a", "b", "late"] and grid[2].tolist() == [1, 1, 0.5, 0.5, 0.5, 0.5]


@pytest.mark.parametrize("last_step, end", [(None, 31 / 5), (40, 8), (20, 31 / 5)])
def test_a_heat_map_is_drawn_to_the_last_step(tmp_path, monkeypatch, last_step, end):
    saved = []
    monkeypatch.setattr(report, "_save", lambda fig, path: saved.append(fig))
    report.plot_rank_heatmap([{k: str(v) for k, v in r.items()} for r in projections()], tmp_path / "ranks.png",
                             "ranks", steps_per_epoch=5, last_step=last_step)
    ax = saved[0].axes[0]
    assert ax.get_xlim() == pytest.approx((0, end))  # from step 0 (dense until step 5), in epochs of 5 steps
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
