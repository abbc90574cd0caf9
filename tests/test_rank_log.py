"""ranks.csv: a row where a layer's rank changes, read back as every projection's ranks."""

import pytest

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


def test_the_grid_holds_each_rank_until_the_layers_next_row():
    for given in (projections(), changes(projections())):
        layers, steps, grid = report.rank_grid([{k: str(v) for k, v in r.items()} for r in given])
        assert layers == ["a", "b"] and steps == [5, 10, 20, 30]
        assert grid.mul(16).tolist() == [[14, 12, 11, 11], [12, 12, 12, 9]]
    layers, steps, grid = report.rank_grid([{"step": "8", "layer": "late", "rank": "2", "max_rank": "4"},
                                            *[{k: str(v) for k, v in r.items()} for r in projections()]])
    assert layers == ["a", "b", "late"] and grid[2].isnan().tolist() == [True, False, False, False, False]


@pytest.mark.parametrize("last_step", [None, 40])
def test_a_heat_map_is_drawn_to_the_last_step(tmp_path, last_step):
    report.plot_rank_heatmap([{k: str(v) for k, v in r.items()} for r in projections()], tmp_path / "ranks.png",
                             "ranks", steps_per_epoch=5, last_step=last_step)
    assert (tmp_path / "ranks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
