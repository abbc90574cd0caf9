"""benchmarks/reproduce.py: parallel workers, resuming across calls through a pack, and the report.

Two tiny runs of its real run list (ResNet-20 dense and TRP, 10 epochs of 64 generated 8×8 images) go
through the GPU round trip: a first call whose workers stop after their first epoch and pack the runs,
then a second call on a fresh root seeded from that pack, two workers at once, finishing both.
"""

import csv
import json
import os
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from lrtrain import benchmark
from lrtrain.config import load_recipe
from lrtrain.train import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reproduce  # noqa: E402

RUNS = ["resnet20_dense", "resnet20_trp_channel_nuclear"]
SETS = ["data.name=sample", "data.train_size=64", "data.test_size=32", "data.image_size=8", "data.padding=1",
        "data.batch_size=16", "data.eval_batch_size=32", "train.device=cpu"]
SCALE = 0.06  # 164 epochs -> 10, milestones 81, 122 -> 5, 7
TINY = ["--epochs-scale", str(SCALE), *(a for s in SETS for a in ("--set", s))]


@pytest.fixture(scope="module")
def calls(tmp_path_factory):
    """Call 1 stops every worker after its first epoch and packs; call 2 resumes from the pack elsewhere."""
    d = tmp_path_factory.mktemp("reproduce")
    # Workers and the in-process reference below must use the same thread count to agree bit for bit.
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        # A startup allowance of all but 0.75 s of the call and a margin of 0.25 s: each worker stops after
        # the epoch that passes 0.5 s (a fresh run gets started with at least the margin to train in).
        reproduce.main([*TINY, "--runs", *RUNS, "--parallel", "2", "--root", str(d / "first"),
                        "--pack", str(d / "out1"), "--time-limit", "100", "--margin", "0.25", "--startup", "99.25"])
        interrupted = {name: reproduce.progress(d / "first" / name) for name in RUNS}
        reproduce.main([*TINY, "--runs", *RUNS, "--parallel", "2", "--root", str(d / "second"),
                        "--seed", str(d / "out1"), "--pack", str(d / "out2")])
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    return d, interrupted


def test_first_call_stops_resumably_and_packs_only_what_a_resume_needs(calls):
    d, interrupted = calls
    for name in RUNS:
        finished, step = interrupted[name]
        assert not finished and 0 < step < 40  # 4 steps an epoch, 10 epochs
    pieces = sorted((d / "out1").iterdir())
    assert [p.name for p in pieces] == ["reproduce_runs.tar.000"]
    names = _tar_names(d / "out1")
    for name in RUNS:
        assert {f"{name}/config.yaml", f"{name}/metrics.csv", f"{name}/train.log"} <= names
        assert sum(n.startswith(f"{name}/checkpoints/step_") for n in names) == 1
    assert not any(n.endswith(("compact.pt", "compact_module.pt")) for n in names)


def test_second_call_resumes_both_in_parallel_and_matches_an_uninterrupted_run(calls, tmp_path):
    d, _ = calls
    for name in RUNS:
        assert reproduce.progress(d / "second" / name) == (1, 0)
        log = (d / "second" / name / "train.log").read_text()
        assert "stopped at step" in log and "resumed from" in log
    names = _tar_names(d / "out2")
    assert {f"{name}/compact.pt" for name in RUNS} <= names and not any("checkpoints" in n for n in names)

    run = next(r for r in reproduce.RUNS if r.name == "resnet20_trp_channel_nuclear")
    cfg = load_recipe(reproduce.RECIPES / run.recipe, reproduce.overrides(run, SETS, SCALE))
    cfg["out_dir"] = str(tmp_path / "reference")
    reference = Trainer(cfg).fit()
    resumed = json.loads((d / "second" / run.name / "summary.json").read_text())
    for key in ("final_acc", "best_acc", "pre_finalize_acc", "steps", "compact", "ranks"):
        assert resumed[key] == reference[key], key
    ours = torch.load(d / "second" / run.name / "compact.pt", weights_only=True)["state_dict"]
    theirs = torch.load(tmp_path / "reference" / "compact.pt", weights_only=True)["state_dict"]
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_report_writes_the_table_with_paper_columns_and_the_plot(calls, monkeypatch):
    d, _ = calls
    stem = d / "results" / "cifar10"
    report = [*TINY, "--runs", *RUNS, "--root", str(d / "second"), "--out", str(stem), "--report-only",
              "--threads", "1", "--latency-iters", "2"]
    reproduce.main(report)
    first = stem.with_suffix(".csv").read_text()
    timed = []
    monkeypatch.setattr(benchmark, "_compact_speedups", lambda *a, **k: timed.append(a[0].name) or (9.0, 9.0))
    reproduce.main(report)  # the runs are as they were: their CPU speedups are kept, not timed again
    assert timed == [] and stem.with_suffix(".csv").read_text() == first
    reproduce.main([*report, "--remeasure"])
    assert sorted(timed) == sorted(RUNS) and stem.with_suffix(".csv").read_text() != first
    timed.clear()
    reproduce.main([*report, "--threads", "2"])  # kept values were timed on one thread: timed again
    assert sorted(timed) == sorted(RUNS)
    timed.clear()
    stem.with_suffix(".csv").write_bytes(b"\xff\xfe\x00 cut short")  # a damaged table: timed again, not a crash
    reproduce.main(report)
    assert sorted(timed) == sorted(RUNS)
    monkeypatch.undo()
    reproduce.main([*report, "--remeasure"])
    with open(stem.with_suffix(".csv")) as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert rows.keys() == set(RUNS)
    trp = rows["resnet20_trp_channel_nuclear"]
    assert float(trp["paper_top1"]) == 90.50 and float(trp["paper_speedup"]) == 2.17
    assert float(trp["top1_diff"]) == pytest.approx(float(trp["top1_final"]) - 90.50)
    assert float(trp["flops_reduction"]) == pytest.approx(1 - float(trp["compact_mflops"]) / float(trp["dense_mflops"]))
    assert trp["paper_source"] == "TRP official README"
    assert trp["command"].startswith("lrtrain train recipes/cifar10_resnet20_trp_channel.yaml --set ")
    md = stem.with_suffix(".md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model"))
    assert [c.strip() for c in header.strip("|").split("|")] == reproduce.COLUMNS
    assert md.count("| resnet20 |") == 2
    png = stem.parent / "cifar10_acc_vs_flops.png"
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def _fake_run(root: Path, name: str, step: int | None = None, finished: bool = False) -> Path:
    run_dir = root / name
    (run_dir / "checkpoints").mkdir(parents=True)
    if step is not None:
        (run_dir / "checkpoints" / f"step_{step:09d}.pt").write_bytes(b"")
    if finished:
        (run_dir / "summary.json").write_text("{}")
    return run_dir


def test_merge_keeps_the_copy_that_is_further_along(tmp_path):
    root, incoming = tmp_path / "root", tmp_path / "incoming"
    _fake_run(root, "ahead", step=50)
    _fake_run(incoming, "ahead", step=20)
    _fake_run(root, "behind", step=20)
    _fake_run(incoming, "behind", step=50)
    _fake_run(root, "done", finished=True)
    _fake_run(incoming, "done", step=90)
    _fake_run(incoming, "new", step=10)
    assert reproduce.merge([incoming], root) == ["behind", "new"]
    assert {n: reproduce.progress(root / n) for n in ["ahead", "behind", "done", "new"]} == {
        "ahead": (0, 50), "behind": (0, 50), "done": (1, 0), "new": (0, 10)}
    # a source that is not there (a carry that did not travel, a typo) ends the call: its runs would
    # otherwise train afresh unnoticed; the others are merged first
    _fake_run(incoming, "newer", step=5)
    with pytest.raises(SystemExit, match=r"missing does not exist \(the rest is merged\)"):
        reproduce.merge([tmp_path / "missing", incoming], root)
    assert reproduce.progress(root / "newer") == (0, 5)


def test_run_list_covers_the_issue_and_every_entry_resolves():
    names = [r.name for r in reproduce.RUNS]
    assert len(set(names)) == len(names) == 23 + 11  # the eleven ResNet-56 rows twice
    for model in ("resnet20", "resnet56"):
        for method in ("dense", "svd_finetune", "trp_channel_nuclear", "lrpet", "elrt_tucker2", "elrt_channel"):
            assert f"{model}_{method}" in names
    trp = {}  # (model, scheme, nuclear on, final cut) -> run name, of the first seeds
    for run in reproduce.RUNS:
        cfg = reproduce.spec(run, reproduce.overrides(run, [], 1.0)).recipe
        assert cfg["model"]["name"] == run.name.split("_")[0]
        assert cfg["train"]["keep_checkpoints"] == 1
        method = cfg["method"]
        if method["name"] == "trp" and "seed1" not in run.name:
            trp[cfg["model"]["name"], method["scheme"], method["nuclear"] > 0, str(method["final"])] = run.name
    # Issue 8: each scheme with and without the nuclear term; for ResNet-56 at the paper's 2.31x (the ramp's
    # FLOPs cut), besides the official 0.9-energy rule's row.
    for scheme in ("channel", "spatial"):
        for nuclear in (True, False):
            assert ("resnet20", scheme, nuclear, "threshold:0.05") in trp
            assert ("resnet56", scheme, nuclear, "flops:0.433") in trp
    assert ("resnet56", "channel", True, "threshold:0.05") in trp
    trp56 = ["resnet56_trp_channel_nuclear", "resnet56_trp_channel_ramp", "resnet56_trp_channel_ramp_nonuclear",
             "resnet56_trp_spatial_ramp", "resnet56_trp_spatial_ramp_nonuclear"]
    assert [r.name for r in reproduce.select(["resnet56_trp_*"])] == trp56 + [f"{n}_seed1" for n in trp56]
    with pytest.raises(SystemExit, match="no run matches"):
        reproduce.select(["resnet18_*"])


def _tar_names(folder: Path) -> set[str]:
    names = set()
    for piece in sorted(folder.glob(reproduce.PACK_NAME + ".*")):  # each piece unpacks alone
        with tarfile.open(piece, "r:*", ignore_zeros=True) as tar:
            names |= set(tar.getnames())
    return names


def test_worker_limit_takes_off_the_startup_and_starts_no_fresh_run_without_time_to_train(tmp_path):
    fresh = tmp_path / "fresh"
    started = _fake_run(tmp_path, "started", step=10)
    # a long epoch keeps no reserve of its own: the deadline stops it mid-epoch, resumably
    (started / "metrics.csv").write_text("epoch,epoch_time_s\n0,45\n")
    assert reproduce.worker_limit(300, fresh, margin=90, startup=45) == pytest.approx(165)
    assert reproduce.worker_limit(2 * 90 + 45 + 1, fresh, margin=90, startup=45) == pytest.approx(91)
    assert reproduce.worker_limit(2 * 90 + 45 - 1, fresh, margin=90, startup=45) is None
    # A started run resumes from its checkpoint: any time past its start and margin is worth it.
    assert reproduce.worker_limit(100, started, margin=30, startup=30) == pytest.approx(40)
    assert reproduce.worker_limit(59, started, margin=30, startup=30) is None


# Stand-ins for `lrtrain train`, by run: finish, fail, or train until terminated.
FAKE_WORKERS = {
    "resnet20_dense": "import json, os, pathlib, sys; d = pathlib.Path(sys.argv[1]); "
                      "(d / 'compact.pt').write_bytes(b'c'); "
                      "(d / 'recorded_commit').write_text(os.environ.get('LRTRAIN_COMMIT', '')); "
                      "(d / 'summary.json').write_text(json.dumps({'final_acc': 90.0, 'speedup': 1.0}))",
    "resnet20_svd_finetune": "import sys; print('boom'); sys.exit(1)",
    "resnet20_trp_channel_nuclear": "import pathlib, sys, time; d = pathlib.Path(sys.argv[1]) / 'checkpoints'; "
                                    "d.mkdir(); (d / 'step_000000004.pt').write_bytes(b'x'); "
                                    "print('still training', flush=True); time.sleep(60)",
}


def test_a_call_packs_after_each_worker_and_pack_only_packs_just_its_runs(tmp_path, monkeypatch, capsys):
    root, out = tmp_path / "root", tmp_path / "out"
    monkeypatch.setattr(reproduce, "worker_command",
                        lambda run, sets, run_dir, data_dir, limit: [sys.executable, "-c", FAKE_WORKERS[run.name],
                                                                     str(run_dir)])
    packs = []
    real_pack = reproduce.pack

    def recording_pack(root, names, dest, **kw):
        packs.append(list(names))
        return real_pack(root, names, dest, **kw)

    monkeypatch.setattr(reproduce, "pack", recording_pack)
    _fake_run(root, "resnet56_dense", step=8)  # merged from a seed, not trained by this call
    with pytest.raises(SystemExit, match=r"failed: resnet20_svd_finetune \(exit 1\)"):  # the call's status says so
        reproduce.main(["--runs", *FAKE_WORKERS, "--root", str(root), "--pack", str(out), "--time-limit", "4",
                        "--margin", "0", "--startup", "0", "--commit", "abc1234"])
    printed = capsys.readouterr().out
    assert (root / "resnet20_dense" / "recorded_commit").read_text() == "abc1234"  # what the workers record
    # One pack as each worker exits, each holding every run started so far.
    assert packs == [["resnet20_dense"], ["resnet20_dense", "resnet20_svd_finetune"], list(FAKE_WORKERS)]
    assert "resnet20_dense: finished" in printed
    assert "resnet20_svd_finetune: FAILED (exit 1)" in printed and "boom" in printed
    assert "resnet20_trp_channel_nuclear: stopped by the deadline, resumable" in printed
    assert "still training" not in printed  # an expected stop is one line, without its log's tail
    names = _tar_names(out)
    assert {"resnet20_dense/compact.pt", "resnet20_trp_channel_nuclear/checkpoints/step_000000004.pt"} <= names
    assert not any(n.startswith("resnet56_dense") for n in names)

    reproduce.main(["--root", str(root), "--pack", str(tmp_path / "again"), "--pack-only"])
    assert _tar_names(tmp_path / "again") == names
    # runs this machine did not train: said, and the pack already there is kept
    with pytest.raises(SystemExit, match=r"none of resnet56_dense was trained under .*: nothing packed"):
        reproduce.main(["--root", str(root), "--pack", str(tmp_path / "again"), "--pack-only",
                        "--runs", "resnet56_dense"])
    assert _tar_names(tmp_path / "again") == names
    merged = tmp_path / "merged"
    reproduce.main(["--root", str(merged), "--unpack", str(tmp_path / "again")])
    assert reproduce.progress(merged / "resnet20_dense") == (1, 0)
    assert reproduce.progress(merged / "resnet20_trp_channel_nuclear") == (0, 4)


def test_relative_paths_reach_the_workers_absolute(tmp_path, monkeypatch):
    """The workers start in the repository root, not in the caller's folder."""
    seen = []

    def command(run, sets, run_dir, data_dir, limit):
        seen.append((run_dir, data_dir))
        return [sys.executable, "-c", "import os, sys; open(sys.argv[1], 'w').write(os.environ['TORCHINDUCTOR_CACHE_DIR'])",
                str(tmp_path / "cache_dir.txt")]

    monkeypatch.setattr(reproduce, "worker_command", command)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    reproduce.main(["--runs", "resnet20_dense", "--root", "runs", "--data-dir", "cifar", "--pack", "out"])
    assert seen == [(tmp_path / "runs" / "resnet20_dense", str(tmp_path / "cifar"))]
    assert (tmp_path / "cache_dir.txt").read_text() == str(tmp_path / "runs-inductor")


def test_make_seed_holds_the_selected_unfinished_runs_and_marks_the_finished_ones(tmp_path):
    root, seed, gpu = tmp_path / "root", tmp_path / "seed", tmp_path / "gpu"
    done = _fake_run(root, "resnet56_dense", finished=True)
    (done / "compact.pt").write_bytes(b"c" * 1000)
    for name, step in [("resnet56_lrpet", 7), ("resnet20_lrpet", 9)]:
        run_dir = _fake_run(root, name, step=step)
        (run_dir / "config.yaml").write_text("{}\n")
    reproduce.main(["--root", str(root), "--make-seed", str(seed), "--runs", "resnet56_*"])
    assert _tar_names(seed) == {"resnet56_dense/summary.json", "resnet56_lrpet/config.yaml",
                                "resnet56_lrpet/checkpoints/step_000000007.pt"}
    reproduce.merge([seed], gpu)
    assert {p.name for p in gpu.iterdir()} == {"resnet56_dense", "resnet56_lrpet"}
    assert reproduce.progress(gpu / "resnet56_dense") == (1, 0)  # a call seeded so does not train it again
    assert reproduce.progress(gpu / "resnet56_lrpet") == (0, 7)


def test_list_says_how_far_each_unfinished_run_got(calls, tmp_path, capsys):
    d, _ = calls
    reproduce.main([*TINY, "--runs", *RUNS, "--root", str(d / "first"), "--list"])
    out = capsys.readouterr().out
    with open(d / "first" / "resnet20_dense" / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    assert f"epoch {last['epoch']}/10, test {float(last['test_acc']):.2f} % (best " in out
    (tmp_path / "bare" / "checkpoints").mkdir(parents=True)
    (tmp_path / "bare" / "checkpoints" / "step_000000012.pt").write_bytes(b"")
    assert reproduce.where(tmp_path / "bare") == "step 12" and reproduce.where(tmp_path / "none") == "not started"
    assert reproduce.time_left(tmp_path / "bare") is None


def test_time_left_takes_the_median_of_the_recent_epochs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train:\n  epochs: 10\n")
    times = [30.0, 5.0, 4.0, 6.0, 5.5, 40.0, 5.0]  # the first compiles; one epoch shared a busier device
    (run / "metrics.csv").write_text("epoch,epoch_time_s\n" + "".join(f"{i + 1},{t}\n" for i, t in enumerate(times)))
    left, seconds = reproduce.time_left(run)
    assert left == 3 and seconds == pytest.approx(3 * 5.5)  # median of 4.0, 6.0, 5.5, 40.0, 5.0


def test_gpu_monitor_summarizes_nvidia_smi_samples(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '40, 1000\\n80, 3000\\n[N/A], 5\\n'\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monitor = reproduce.GpuMonitor()
    try:
        for _ in range(100):
            if len(monitor.samples) == 2:
                break
            time.sleep(0.05)
        assert monitor.summary() == "GPU utilization 60 % mean, 40-80 % over 2 samples; memory up to 3000 MiB"
    finally:
        monitor.stop()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert reproduce.GpuMonitor().summary() is None


def test_a_pack_replaces_the_previous_one_whole_or_not_at_all(tmp_path, monkeypatch):
    root, out = tmp_path / "root", tmp_path / "out"
    for name, step in (("a", 3), ("b", 5)):
        (_fake_run(root, name, step=step) / "checkpoints" / f"step_{step:09d}.pt").write_bytes(os.urandom(6000))
    monkeypatch.setattr(reproduce, "PIECE", 8000)  # one run a piece
    reproduce.pack(root, ["a", "b"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(before) == 2 and _tar_names(out) == {"a/checkpoints/step_000000003.pt", "b/checkpoints/step_000000005.pt"}

    real_write = Path.write_bytes

    def cut_off_at_the_second_piece(self, data):
        if self.name.endswith(".001.part"):
            raise KeyboardInterrupt  # the call's limit, in the middle of the writes
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", cut_off_at_the_second_piece)
    with pytest.raises(KeyboardInterrupt):
        reproduce.pack(root, ["b", "a"], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # and no part left beside them
    monkeypatch.setattr(Path, "write_bytes", real_write)
    pieces = reproduce.pack(root, ["a"], out)  # fewer pieces: the old ones past its own are gone, no part is left
    assert len(pieces) < len(before) and sorted(out.iterdir()) == sorted(pieces)
    assert _tar_names(out) == {"a/checkpoints/step_000000003.pt"}


def test_packs_are_compressed_and_a_plain_tar_from_an_older_pack_still_unpacks(tmp_path):
    root = tmp_path / "root"
    run_dir = _fake_run(root, "resnet20_trp_channel_nuclear", step=7)
    rows = "".join(f"{s},layer{i}.conv,7,16\n" for s in range(5, 50000, 5) for i in range(3))
    (run_dir / "ranks.csv").write_text("step,layer,rank,max_rank\n" + rows)
    pieces = reproduce.pack(root, ["resnet20_trp_channel_nuclear"], tmp_path / "new")
    assert sum(p.stat().st_size for p in pieces) < len(rows) / 5
    plain = tmp_path / "old" / f"{reproduce.PACK_NAME}.000"
    plain.parent.mkdir()
    with tarfile.open(plain, "w") as tar:
        tar.add(run_dir / "ranks.csv", arcname="resnet20_trp_channel_nuclear/ranks.csv")
        tar.add(run_dir / "checkpoints", arcname="resnet20_trp_channel_nuclear/checkpoints")
    for pack in ("new", "old"):
        reproduce.main(["--root", str(tmp_path / pack / "merged"), "--unpack", str(tmp_path / pack)])
        merged = tmp_path / pack / "merged" / "resnet20_trp_channel_nuclear"
        assert (merged / "ranks.csv").read_text().endswith(rows) and reproduce.progress(merged) == (0, 7)


def test_a_pack_keeps_to_its_limit_and_a_piece_that_does_not_come_back_loses_only_its_runs(tmp_path, monkeypatch,
                                                                                            capsys):
    root, out = tmp_path / "root", tmp_path / "out"
    for name, step in (("a", 3), ("b", 5), ("c", 7), ("d", 9)):
        (_fake_run(root, name, step=step) / "checkpoints" / f"step_{step:09d}.pt").write_bytes(os.urandom(6000))
    (root / "d" / "summary.json").write_text("{}")  # finished: packed before the others
    monkeypatch.setattr(reproduce, "PIECE", 13000)  # two runs a piece
    pieces = reproduce.pack(root, ["a", "b", "c", "d"], out, limit=10000)
    assert "warning: left out of the pack (over 0 MiB or 7 pieces): b c; while the machine is warm, a call of " \
           "--pack-only --runs b c packs them" in capsys.readouterr().out  # ready to paste
    assert len(pieces) == 1 and {n.split("/")[0] for n in _tar_names(out)} == {"a", "d"}
    pieces = reproduce.pack(root, ["a", "b", "c"], out)
    assert len(pieces) == 2
    pieces[0].unlink()  # a piece $OUT did not return, and one cut short
    pieces[1].write_bytes(pieces[1].read_bytes()[:-100])
    reproduce.pack(root, ["c"], tmp_path / "third")
    merged = tmp_path / "merged"
    with pytest.raises(SystemExit, match=r"reproduce_runs.tar.001 cannot be unpacked \(the rest is merged\)"):
        reproduce.main(["--root", str(merged), "--unpack", str(out), str(tmp_path / "third")])
    assert "cannot be unpacked" in capsys.readouterr().out
    assert sorted(p.name for p in merged.iterdir()) == ["c"] and reproduce.progress(merged / "c") == (0, 7)


def test_a_run_in_two_pieces_is_taken_from_the_one_further_along(tmp_path, monkeypatch):
    """A pack cut off between the renames of its pieces, after the runs' order changed (one finished),
    leaves a run in two pieces: the unpack keeps its later copy instead of failing."""
    root, out = tmp_path / "root", tmp_path / "out"
    for name, step in (("a", 3), ("b", 5)):
        (_fake_run(root, name, step=step) / "checkpoints" / f"step_{step:09d}.pt").write_bytes(os.urandom(6000))
    monkeypatch.setattr(reproduce, "PIECE", len(reproduce._run_blob(root, "a", False)) + 50)  # one run a piece
    old = reproduce.pack(root, ["a", "b"], out)  # 000: a, 001: b
    assert len(old) == 2
    stale_b = old[1].read_bytes()
    (root / "b" / "summary.json").write_text("{}")  # b finished: it now comes first
    (root / "b" / "compact.pt").write_bytes(b"x")
    new = reproduce.pack(root, ["a", "b"], out)  # 000: b (finished), 001: a
    assert len(new) == 2
    new[1].write_bytes(stale_b)  # as if cut off after the first rename: 000 the new b, 001 the old b
    merged = tmp_path / "merged"
    assert reproduce.merge([out], merged) == ["b"]
    assert reproduce.progress(merged / "b") == (1, 0)


def test_a_seed_of_a_root_without_runs_is_refused(tmp_path):
    with pytest.raises(SystemExit, match=r"holds no started or finished run \(is --root the folder the runs were "
                                         r"moved to"):
        reproduce.make_seed(tmp_path / "not-there", reproduce.RUNS, tmp_path / "seed")
    assert not (tmp_path / "seed").exists()


def test_a_run_that_cannot_be_read_is_left_out_of_the_pack_and_the_pack_goes_on(tmp_path, monkeypatch, capsys):
    root, out = tmp_path / "root", tmp_path / "out"
    for name in ("a", "b"):
        _fake_run(root, name, step=4)
    real = tarfile.TarFile.add

    def rewritten_while_read(self, name, *args, **kwargs):
        if "/a/" in str(name):
            raise OSError("unexpected end of data")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "add", rewritten_while_read)
    reproduce.pack(root, ["a", "b"], out)
    said = capsys.readouterr().out
    assert "warning: a left out of this pack: it could not be read three times (OSError: unexpected end" in said
    assert "packed 1 run(s)" in said and {n.split("/")[0] for n in _tar_names(out)} == {"b"}


def _fake_mps_control(tmp_path, monkeypatch, daemon_exit=0):
    """A stand-in nvidia-cuda-mps-control on PATH that logs each call: "start PIPE" or "COMMAND PIPE"."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    exe = bin_dir / "nvidia-cuda-mps-control"
    exe.write_text("#!/bin/sh\n"
                   f'if [ "$1" = "-d" ]; then echo "start $CUDA_MPS_PIPE_DIRECTORY" >> {calls}; exit {daemon_exit}; fi\n'
                   f'read line; echo "$line $CUDA_MPS_PIPE_DIRECTORY" >> {calls}\n')
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return calls


def test_mps_points_the_workers_at_its_daemon_and_quits_it(tmp_path, monkeypatch, capsys):
    calls = _fake_mps_control(tmp_path, monkeypatch)
    monkeypatch.setattr(reproduce.Mps, "PROBE", "pass")
    env = {"KEEP": "1"}
    mps = reproduce.Mps()
    assert mps.start(env)
    pipe = env["CUDA_MPS_PIPE_DIRECTORY"]
    assert env["KEEP"] == "1" and Path(pipe).is_dir() and "CUDA_MPS_LOG_DIRECTORY" in env
    mps.stop()
    assert calls.read_text().splitlines() == [f"start {pipe}", f"quit {pipe}"]
    assert "share the GPU through MPS" in capsys.readouterr().out


def test_mps_that_fails_a_cuda_process_is_stopped_and_the_workers_go_on_without(tmp_path, monkeypatch, capsys):
    calls = _fake_mps_control(tmp_path, monkeypatch)
    monkeypatch.setattr(reproduce.Mps, "PROBE", "raise SystemExit('CUDA error: MPS client failed')")
    env = {}
    assert not reproduce.Mps().start(env)
    assert env == {}
    assert [line.split()[0] for line in calls.read_text().splitlines()] == ["start", "quit"]
    out = capsys.readouterr().out
    assert "a CUDA process failed under MPS (CUDA error: MPS client failed)" in out and "time slices" in out


def test_mps_whose_daemon_does_not_start_or_is_missing_changes_nothing(tmp_path, monkeypatch, capsys):
    calls = _fake_mps_control(tmp_path, monkeypatch, daemon_exit=1)
    env = {}
    assert not reproduce.Mps().start(env) and env == {}
    assert [line.split()[0] for line in calls.read_text().splitlines()] == ["start"]  # nothing to quit
    assert "the daemon did not start (exit 1" in capsys.readouterr().out
    monkeypatch.setenv("PATH", "/nonexistent")
    assert not reproduce.Mps().start(env) and env == {}
    assert "nvidia-cuda-mps-control not found" in capsys.readouterr().out


def test_mps_whose_probe_hangs_is_given_up_in_seconds_and_stopped(tmp_path, monkeypatch, capsys):
    calls = _fake_mps_control(tmp_path, monkeypatch)
    monkeypatch.setattr(reproduce.Mps, "PROBE", "import time; time.sleep(30)")
    monkeypatch.setattr(reproduce.Mps, "PROBE_SECONDS", 1)
    env = {}
    assert not reproduce.Mps().start(env) and env == {}
    assert [line.split()[0] for line in calls.read_text().splitlines()] == ["start", "quit"]
    assert "a CUDA process failed under MPS (no answer in 1 s)" in capsys.readouterr().out


@pytest.mark.parametrize("before, after", [("unknown", "abc1234"), ("4ad1b89, unknown", "4ad1b89, abc1234"),
                                           ("4ad1b89", "4ad1b89"), (None, "abc1234")])
def test_the_commit_a_call_was_given_fills_only_the_unknown_sessions(tmp_path, before, after):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"commit": before}))
    reproduce._set_commit(run, "abc1234")
    assert json.loads((run / "summary.json").read_text())["commit"] == after


def test_a_seed_past_its_limit_goes_on_into_further_folders_that_merge_to_the_same_runs(tmp_path, capsys):
    root, seed, gpu = tmp_path / "root", tmp_path / "seed", tmp_path / "gpu"
    _fake_run(root, "resnet20_dense", finished=True)
    started = {"resnet20_lrpet": 3, "resnet20_trp_channel": 5, "resnet20_elrt_tucker2": 7, "resnet20_trp_spatial": 9}
    for name, step in started.items():
        (_fake_run(root, name, step=step) / "checkpoints" / f"step_{step:09d}.pt").write_bytes(os.urandom(20000))
    (tmp_path / "seed-7").mkdir()  # left by an earlier, longer seed
    reproduce.main(["--root", str(root), "--make-seed", str(seed), "--runs", "resnet20_*",
                    "--seed-limit", str(30000 / 2**20)])  # one run a folder
    dirs = sorted(p for p in tmp_path.iterdir() if p.name.startswith("seed"))
    assert [d.name for d in dirs] == ["seed", "seed-2", "seed-3", "seed-4"]  # seed-7 removed
    assert "the seed takes 4 folders" in capsys.readouterr().out
    assert all(sum(f.stat().st_size for f in d.iterdir()) <= 30000 for d in dirs)
    assert "resnet20_dense/summary.json" in _tar_names(seed)  # the finished runs' marks in the first
    reproduce.main(["--root", str(gpu), "--unpack", *map(str, dirs)])
    assert reproduce.progress(gpu / "resnet20_dense") == (1, 0)
    assert {n: reproduce.progress(gpu / n) for n in started} == {n: (0, s) for n, s in started.items()}
    before = {d.name: sorted(f.read_bytes() for f in d.iterdir()) for d in dirs}
    with pytest.raises(SystemExit, match="alone exceed"):  # refused before anything is written
        reproduce.main(["--root", str(root), "--make-seed", str(seed), "--seed-limit", str(10000 / 2**20)])
    assert {d.name: sorted(f.read_bytes() for f in d.iterdir()) for d in dirs} == before
    for name in ("seed-9", "seed-02", "seed-1", "seed-x"):  # not this seed's: other files in them, or not N >= 2
        (tmp_path / name).mkdir()
        (tmp_path / name / "mine.txt").write_text("keep")
    (tmp_path / "seed-8").mkdir()
    (tmp_path / "seed-8" / f"{reproduce.PACK_NAME}.000").write_bytes(b"")  # an older seed's folder
    reproduce.main(["--root", str(root), "--make-seed", str(seed), "--runs", "resnet20_*"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("seed")) == [
        "seed", "seed-02", "seed-1", "seed-9", "seed-x"]


def test_seed_limits_per_folder_keep_the_first_ones_small_and_put_the_rest_in_the_last(tmp_path):
    root, seed = tmp_path / "root", tmp_path / "seed"
    names = ["resnet20_lrpet", "resnet20_trp_channel", "resnet20_elrt_tucker2", "resnet20_trp_spatial",
             "resnet20_elrt_channel"]
    for step, name in enumerate(names, 1):
        (_fake_run(root, name, step=step) / "checkpoints" / f"step_{step:09d}.pt").write_bytes(os.urandom(20000))
    reproduce.main(["--root", str(root), "--make-seed", str(seed), "--runs", "resnet20_*",
                    "--seed-limit", str(30000 / 2**20), str(30000 / 2**20), str(100000 / 2**20)])
    dirs = [seed, tmp_path / "seed-2", tmp_path / "seed-3"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("seed")) == [d.name for d in dirs]
    assert [len({n.split("/")[0] for n in _tar_names(d)}) for d in dirs] == [1, 1, 3]  # one, one, the rest
    # a first folder too small for any run stays empty where a later one can hold them (it was refused)
    reproduce.main(["--root", str(root), "--make-seed", str(seed), "--runs", "resnet20_*",
                    "--seed-limit", str(10000 / 2**20), str(200000 / 2**20)])
    assert not _tar_names(seed) and len({n.split("/")[0] for n in _tar_names(tmp_path / "seed-2")}) == 5


def test_every_resnet56_row_has_a_second_seed_after_all_the_first_seeds():
    names = [r.name for r in reproduce.RUNS]
    first = [r for r in reproduce.RUNS if r.name.startswith("resnet56_") and not r.name.endswith("_seed1")]
    for run in first:
        again = reproduce.RUNS[names.index(f"{run.name}_seed1")]
        assert (again.label, again.recipe, again.paper) == (run.label, run.recipe, run.paper)
        assert again.overrides == run.overrides + ("seed=1",)
        assert names.index(again.name) > max(names.index(r.name) for r in first)
        assert load_recipe(reproduce.RECIPES / again.recipe, list(again.overrides))["seed"] == 1


def test_the_plot_shows_each_published_figure_once(tmp_path, monkeypatch):
    shown = {}
    monkeypatch.setattr(reproduce.benchmark, "plot", lambda rows, path, title, **kw: shown.update(kw))
    reproduce.main(["--root", str(tmp_path / "none"), "--out", str(tmp_path / "results" / "cifar10"), "--report-only",
                    "--runs", "resnet20_trp_channel_nuclear", "resnet20_trp_channel_ramp", "resnet56_lrpet",
                    "resnet56_lrpet_flops_cosine", "resnet56_lrpet_seed1"])
    assert [(p["label"], p["model"], p["top1"]) for p in shown["paper_points"]] == [
        ("TRP channel + nuclear (paper)", "resnet20", 90.50), ("LRPET (paper)", "resnet56", 93.27)]
    assert all("method" not in p for p in shown["paper_points"])  # neutral: no run's colour
    assert shown["started"] == {"resnet20": 0, "resnet56": 0}
    _fake_run(tmp_path / "none", "resnet56_lrpet_seed1", step=7)  # said in a panel without a finished run
    reproduce.main(["--root", str(tmp_path / "none"), "--out", str(tmp_path / "results" / "cifar10"), "--report-only",
                    "--runs", "resnet56_lrpet", "resnet56_lrpet_seed1"])
    assert shown["started"] == {"resnet56": 1}


def test_list_totals_the_epochs_left_per_model(tmp_path, capsys):
    root = tmp_path / "root"
    run_dir = _fake_run(root, "resnet20_lrpet", step=7)
    (run_dir / "config.yaml").write_text("train:\n  epochs: 400\n")
    (run_dir / "metrics.csv").write_text("epoch,test_acc,epoch_time_s\n1,10.0,2.0\n2,20.0,2.0\n")
    _fake_run(root, "resnet20_dense", finished=True).joinpath("summary.json").write_text(
        json.dumps({"final_acc": 91.0, "speedup": 1.0}))
    reproduce.main(["--root", str(root), "--list", "--runs", "resnet20_dense", "resnet20_lrpet", "resnet56_dense",
                    "resnet56_lrpet"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == ("epochs left: resnet20 398 in 1 run(s), 0 not started; "
                    "resnet56 564 in 2 run(s), 2 not started")  # 164 (dense) + 400 (LRPET) from the recipes


def _started(root: Path, name: str, done: int, epochs: int, pace: float) -> None:
    run_dir = _fake_run(root, name, step=done * 10)
    (run_dir / "config.yaml").write_text(f"train:\n  epochs: {epochs}\n")
    (run_dir / "metrics.csv").write_text("epoch,test_acc,epoch_time_s\n" +
                                         "".join(f"{e},50.0,{pace}\n" for e in range(1, done + 1)))


def test_a_call_starts_runs_past_half_first_then_the_longest_still_to_train(tmp_path):
    root = tmp_path / "root"
    _started(root, "resnet20_lrpet", done=300, epochs=400, pace=2.0)     # past half: 200 s left
    _started(root, "resnet56_dense", done=10, epochs=164, pace=10.0)     # 1,540 s
    _started(root, "resnet56_lrpet", done=10, epochs=400, pace=10.0)     # 3,900 s
    _started(root, "resnet56_elrt_tucker2", done=10, epochs=164, pace=40.0)  # 6,160 s
    _fake_run(root, "resnet56_svd_finetune", finished=True)
    _started(root, "resnet56_trp_channel_nuclear", done=164, epochs=164, pace=20.0)  # its end cut off: 0 s left
    names = ["resnet20_lrpet", "resnet56_dense", "resnet56_svd_finetune", "resnet56_lrpet", "resnet56_elrt_tucker2",
             "resnet56_dense_seed1", "resnet56_elrt_channel", "resnet20_dense", "resnet56_trp_channel_nuclear"]
    order = reproduce.training_order(reproduce.select(names), root, [], 1.0)
    # not started: the dense second seed at its first seed's pace (164 x 10 s = 1,640 s); ELRT channel at the
    # median ResNet-56 pace (10 s: 1,640 s too, before it in RUNS order); ResNet-20 dense at the only
    # ResNet-20 pace (164 x 2 s)
    assert [r.name for r in order] == ["resnet20_lrpet", "resnet56_trp_channel_nuclear", "resnet56_elrt_tucker2",
                                       "resnet56_lrpet",
                                       "resnet56_elrt_channel", "resnet56_dense_seed1", "resnet56_dense",
                                       "resnet20_dense"]


# A worker that, as torch.compile does, reads the cache folder it is given and adds its own entry to it.
CACHING_WORKER = ("import json, os, pathlib, sys; d = pathlib.Path(sys.argv[1]); "
                  "c = pathlib.Path(os.environ['TORCHINDUCTOR_CACHE_DIR']); "
                  "found = sorted(str(p.relative_to(c)) for p in c.rglob('*') if p.is_file()) if c.is_dir() else []; "
                  "(d / 'cache_seen.json').write_text(json.dumps(found)); "
                  "(c / 'fxgraph' / d.name).mkdir(parents=True, exist_ok=True); "
                  "(c / 'fxgraph' / d.name / 'entry').write_text('compiled ' + d.name); "
                  "(d / 'compact.pt').write_bytes(b'c'); "
                  "(d / 'summary.json').write_text(json.dumps({'final_acc': 90.0, 'speedup': 1.0}))")


def _caching_call(root: Path, out: Path, run: str, *extra: str) -> list[str]:
    reproduce.main(["--runs", run, "--root", str(root), "--pack", str(out), *extra])
    return json.loads((root / run / "cache_seen.json").read_text())


def test_the_compile_cache_goes_round_trip_from_one_call_to_the_next_machines_workers(tmp_path, monkeypatch,
                                                                                        capsys):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setattr(reproduce, "worker_command",
                        lambda run, sets, run_dir, data_dir, limit: [sys.executable, "-c", CACHING_WORKER,
                                                                     str(run_dir)])
    # Session 1's GPU call: nothing to start from; its workers' cache comes back beside the pack.
    assert _caching_call(tmp_path / "gpu1", tmp_path / "out1", "resnet20_dense", "--compile-cache",
                         str(tmp_path / "none")) == []
    assert "no compile_cache.tar.gz" in capsys.readouterr().out
    assert (tmp_path / "gpu1-inductor" / "fxgraph" / "resnet20_dense" / "entry").is_file()  # beside the root
    with tarfile.open(tmp_path / "out1" / reproduce.COMPILE_CACHE) as tar:
        assert "./fxgraph/resnet20_dense/entry" in tar.getnames()
    # Here: unpacking the call's files keeps the cache beside the run folders (what is committed).
    reproduce.main(["--root", str(tmp_path / "here" / "reproduce"), "--unpack", str(tmp_path / "out1")])
    kept = tmp_path / "here" / "compile-cache"
    assert (kept / reproduce.COMPILE_CACHE).read_bytes() == (tmp_path / "out1" / reproduce.COMPILE_CACHE).read_bytes()
    # Session 2, a fresh machine: the carried cache is what its workers find, and it grows.
    seen = _caching_call(tmp_path / "gpu2", tmp_path / "out2", "resnet20_svd_finetune", "--compile-cache", str(kept))
    assert seen == ["fxgraph/resnet20_dense/entry"]
    assert "unpacked into" in capsys.readouterr().out
    with tarfile.open(tmp_path / "out2" / reproduce.COMPILE_CACHE) as tar:
        assert {"./fxgraph/resnet20_dense/entry", "./fxgraph/resnet20_svd_finetune/entry"} <= set(tar.getnames())
    # A second call on the warm machine keeps the cache it has.
    _caching_call(tmp_path / "gpu2", tmp_path / "out3", "resnet20_elrt_channel", "--compile-cache", str(kept))
    assert "already warm" in capsys.readouterr().out
    assert (tmp_path / "gpu2-inductor" / "fxgraph" / "resnet20_svd_finetune" / "entry").is_file()
    # A call not given one (here, on the CPU) leaves the kept cache alone, however near it lies.
    assert _caching_call(tmp_path / "here" / "reproduce", tmp_path / "out4", "resnet20_lrpet") == []


def test_a_damaged_compile_cache_is_said_and_the_workers_compile_anyway(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setattr(reproduce, "worker_command",
                        lambda run, sets, run_dir, data_dir, limit: [sys.executable, "-c", CACHING_WORKER,
                                                                     str(run_dir)])
    carried = tmp_path / "carried"
    carried.mkdir()
    (carried / reproduce.COMPILE_CACHE).write_bytes(b"\x1f\x8b not really gzip")
    assert _caching_call(tmp_path / "gpu", tmp_path / "out", "resnet20_dense", "--compile-cache", str(carried)) == []
    assert "cannot be unpacked" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("gpu-inductor-")] == []  # no staging left


def test_the_compile_cache_leaves_out_tritons_folder_and_packs_only_into_the_room_left(tmp_path, monkeypatch,
                                                                                       capsys):
    cache, out = tmp_path / "inductor", tmp_path / "out"
    for sub in ("fxgraph", "triton/0", "locks"):
        (cache / sub).mkdir(parents=True)
        (cache / sub / "entry").write_bytes(os.urandom(4096))  # incompressible
    with tarfile.open(reproduce.save_compile_cache(cache, out)) as tar:
        assert sorted(tar.getnames()) == [".", "./fxgraph", "./fxgraph/entry"]  # the graphs carry their kernels
    from torch._inductor import config
    with config.patch(bundle_triton_into_fx_graph_cache=False):  # they would not: Triton's folder is kept
        with tarfile.open(reproduce.save_compile_cache(cache, tmp_path / "unbundled")) as tar:
            assert "./triton/0/entry" in tar.getnames() and "./locks" not in tar.getnames()
    monkeypatch.setattr(reproduce, "OUT_LIMIT", 12 * 1024)
    (out / f"{reproduce.PACK_NAME}.000").write_bytes(b"x" * 10 * 1024)  # the runs' pack: 2 KiB left
    assert reproduce.save_compile_cache(cache, out) is None
    assert "not packed (a call of --pack-cache packs it alone)" in capsys.readouterr().out
    assert (out / reproduce.COMPILE_CACHE).exists()  # the earlier one is kept, not cut
    alone = tmp_path / "alone"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    reproduce.main(["--root", str(tmp_path / "root"), "--pack", str(alone), "--pack-cache"])
    assert [f.name for f in alone.iterdir()] == [reproduce.COMPILE_CACHE]
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "empty"))
    with pytest.raises(SystemExit, match="--pack-cache: nothing packed from .*empty"):
        reproduce.main(["--root", str(tmp_path / "root"), "--pack", str(alone), "--pack-cache"])
    # far over even a piece: not compressed at all, and said so with its size as it is
    monkeypatch.setattr(reproduce, "PIECE", 256)
    monkeypatch.setattr(reproduce.tarfile, "open", None)  # would fail if called
    assert reproduce.save_compile_cache(cache, tmp_path / "far") is None
    printed = capsys.readouterr().out
    assert "compile cache: 0.0 MiB to pack; " in printed and "triton 0.0 MiB" in printed
    assert "MiB, over the 0.0 MiB left" in printed and "compressed" not in printed and "--pack-cache" not in printed


@pytest.mark.slow
def test_a_carried_compile_cache_spares_the_next_machines_workers_compiling(tmp_path, monkeypatch):
    """Real torch.compile (CPU Inductor): the second machine's worker writes no new compiled graph."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    tiny = ["--epochs-scale", "0.01", *(a for s in SETS + ["train.compile=true"] for a in ("--set", s))]
    reproduce.main([*tiny, "--runs", "resnet20_dense", "--root", str(tmp_path / "a"), "--pack", str(tmp_path / "o")])

    def graphs(inductor: Path) -> set[str]:
        return {p.name for p in (inductor / "fxgraph").rglob("*") if p.is_file()}

    first = graphs(tmp_path / "a-inductor")
    assert first  # the training and the evaluation graphs were compiled and cached
    reproduce.main(["--root", str(tmp_path / "b"), "--unpack", str(tmp_path / "o")])
    reproduce.main([*tiny, "--runs", "resnet20_dense", "--root", str(tmp_path / "c"),
                    "--compile-cache", str(tmp_path / "compile-cache")])
    assert reproduce.progress(tmp_path / "c" / "resnet20_dense")[0]
    assert graphs(tmp_path / "c-inductor") == first  # every graph loaded, none compiled again


@pytest.mark.slow
def test_a_call_cut_by_its_deadline_mid_epoch_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch, capsys):
    """No reserve before the call's end: the deadline's SIGTERM stops a real worker after its step, and the
    next call ends where an uninterrupted call does."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sets = ["data.name=sample", "data.train_size=2048", "data.test_size=64", "data.batch_size=64",
            "data.eval_batch_size=64", "train.device=cpu"]
    tiny = ["--epochs-scale", "0.02", *(a for s in sets for a in ("--set", s))]  # 164 -> 3 epochs of 32 steps
    started = time.perf_counter()
    reproduce.main([*tiny, "--runs", "resnet20_dense", "--root", str(tmp_path / "straight")])
    # half the uninterrupted call (3 epochs of ~7 s on a 2-core CPU and the worker's start): the deadline
    # falls after the first steps and before the end, however busy the machine
    half = f"{max(7.0, 0.5 * (time.perf_counter() - started)):.1f}"
    reproduce.main([*tiny, "--runs", "resnet20_dense", "--root", str(tmp_path / "cut"), "--time-limit", half,
                    "--margin", "0", "--startup", "0"])
    assert "resnet20_dense: stopped by the deadline, resumable" in capsys.readouterr().out
    done, step = reproduce.progress(tmp_path / "cut" / "resnet20_dense")
    assert not done and step > 0  # stopped with a checkpoint where it was
    reproduce.main([*tiny, "--runs", "resnet20_dense", "--root", str(tmp_path / "cut")])
    a, b = (json.loads((tmp_path / d / "resnet20_dense" / "summary.json").read_text()) for d in ("straight", "cut"))
    assert (a["final_acc"], a["final_loss"], a["epochs"]) == (b["final_acc"], b["final_loss"], b["epochs"])
