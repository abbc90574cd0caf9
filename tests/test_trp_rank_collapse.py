"""benchmarks/trp_rank_collapse.py: reading rank histories, ours and a log of the official code's."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import trp_rank_collapse as trc  # noqa: E402


def test_rank_history_keeps_whole_projections_in_layer_order(tmp_path):
    (tmp_path / "ranks.csv").write_text("step,layer,rank,max_rank\n5,a.0,7,16\n5,b.0,9,32\n10,a.0,6,16\n10,b.0,8,32\n"
                                        "15,a.0,5,16\n")  # step 15 cut off mid-write
    layers, history = trc.rank_history(tmp_path)
    assert layers == ["a.0", "b.0"]
    assert history == {5: [7, 9], 10: [6, 8]}
    assert trc.at(history, 4) is None and trc.at(history, 9) == [7, 9] and trc.at(history, 99) == [6, 8]
    assert trc.stage_means(layers, history[10]) == {"a": 6.0, "b": 8.0}


def test_official_log_skips_comments_and_reads_steps(tmp_path):
    log = tmp_path / "official.log"
    log.write_text("# how it was made\n0 [14, 13] 0s\nloss 0 2.49\n5 [12, 11] 4s\n")
    assert trc.official_history(log) == {0: [14, 13], 5: [12, 11]}
