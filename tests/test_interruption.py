"""Interrupted runs: SIGKILL at any moment, SIGTERM/SIGINT, and a kill during a checkpoint write.

A run killed at any moment and continued with ``--resume`` must end exactly as the uninterrupted run
with the same seed; SIGINT/SIGTERM stop after the step under way with a checkpoint and a clean exit.
The runs here go through the command line in a subprocess (one torch thread, like the suite), on a
tiny ResNet-20 and the generated sample set.
"""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from lrtrain import cli
from lrtrain.config import resolve
from lrtrain.methods import Method, register_method
from lrtrain.train import Trainer
from lrtrain.train.checkpoint import list_checkpoints, load_checkpoint

SRC = str(Path(__file__).resolve().parents[1] / "src")

# 3 epochs of 8 steps; LRPET projects every 3 steps (ranks.csv rows, method state) and a checkpoint
# is written every 3 steps and at each epoch's end, so kills land between, during and after checkpoints.
RECIPE = """
model: {name: resnet20}
data: {name: sample, train_size: 128, test_size: 32, image_size: 8, num_classes: 4, batch_size: 16, padding: 1}
optim: {lr: 0.05}
schedule: {name: cosine}
method: {name: lrpet, goal: 0.5, period: 3}
train: {epochs: 3, progress: false, checkpoint_every: 3}
"""
TIMING = ("epoch_time_s", "img_per_s")
# The random kill delays come from a seeded generator (LRTRAIN_KILL_SEED=n draws other ones); a failure
# names the delay and the checkpoints the killed run had left, to replay that moment.
KILL_SEED = int(os.environ.get("LRTRAIN_KILL_SEED", "0"))


def _env() -> dict:
    path = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lrtrain", "train", *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _steps(run: Path) -> list[int]:
    return [int(p.stem.split("_")[1]) for p in list_checkpoints(run / "checkpoints")]


def _wait_until(condition, proc: subprocess.Popen, timeout: float = 90.0) -> bool:
    """Poll `condition` every 5 ms; False when the process ended first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.005)
    return True


def _kill(proc: subprocess.Popen, moment: str = "") -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill landed {moment}"


def _moment(delay: float, run: Path) -> str:
    return (f"(killed {delay:.4f} s after the checkpoint it waited for, LRTRAIN_KILL_SEED={KILL_SEED}; "
            f"checkpoints left at steps {_steps(run)})")


def _results(run: Path):
    """Everything a run ends with, less wall-clock times."""
    summary = json.loads((run / "summary.json").read_text())
    for key in ("wall_time_s", "run_dir", "commit", "date"):
        summary.pop(key)
    with open(run / "metrics.csv") as f:
        metrics = [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]
    compact = torch.load(run / "compact.pt", weights_only=True)["state_dict"]
    return summary, metrics, (run / "ranks.csv").read_text(), compact


def _assert_same(run: Path, reference: Path, moment: str = "") -> None:
    summary, metrics, ranks, compact = _results(run)
    ref_summary, ref_metrics, ref_ranks, ref_compact = _results(reference)
    assert summary == ref_summary, moment
    assert metrics == ref_metrics, moment
    assert ranks == ref_ranks, moment
    assert compact.keys() == ref_compact.keys() and all(torch.equal(compact[k], ref_compact[k]) for k in compact), \
        moment


def _resume_in_process(run: Path, capsys, moment: str = "") -> None:
    capsys.readouterr()
    assert cli.main(["train", str(run), "--resume"]) == 0, moment
    assert "finished: test accuracy" in capsys.readouterr().out, moment


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory) -> Path:
    """The uninterrupted run (in this process: the same single-threaded CPU kernels as a subprocess)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    assert cli.main(["train", str(recipe), "--out-dir", str(run)]) == 0
    return run


def test_a_run_killed_at_a_random_moment_resumes_to_the_uninterrupted_result(recipe, reference, tmp_path, capsys):
    run = tmp_path / "run"
    delay = random.Random(KILL_SEED).uniform(0.0, 0.25)
    proc = _start(str(recipe), "--out-dir", str(run))
    assert _wait_until(lambda: _steps(run), proc), proc.communicate()
    time.sleep(delay)  # somewhere in the first two epochs: maybe mid-step, mid-checkpoint, mid-evaluation
    _kill(proc, f"(delay {delay:.4f} s)")  # (a kill after the last checkpoint, while finalizing, is one too)
    moment = _moment(delay, run)
    _resume_in_process(run, capsys, moment)
    _assert_same(run, reference, moment)


@pytest.mark.slow
def test_three_kills_at_different_moments_still_end_as_the_uninterrupted_run(recipe, reference, tmp_path, capsys):
    run = tmp_path / "run"
    # 1: right after the first mid-epoch checkpoint (step 3) appears.
    proc = _start(str(recipe), "--out-dir", str(run))
    assert _wait_until(lambda: _steps(run), proc)
    _kill(proc)
    # 2: resumed, then killed once the end-of-epoch-1 checkpoint (step 8) or a later one exists.
    proc = _start(str(run), "--resume")
    assert _wait_until(lambda: _steps(run)[-1] >= 8, proc)
    _kill(proc)
    # 3: resumed, then killed a random moment after its first new checkpoint.
    done = _steps(run)[-1]
    proc = _start(str(run), "--resume")
    assert _wait_until(lambda: _steps(run)[-1] > done, proc)
    delay = random.Random(KILL_SEED).uniform(0.0, 0.2)
    time.sleep(delay)
    _kill(proc, f"(delay {delay:.4f} s)")
    moment = _moment(delay, run)
    _resume_in_process(run, capsys, moment)
    _assert_same(run, reference, moment)


def test_sigterm_saves_a_checkpoint_exits_143_and_the_run_resumes_exactly(recipe, reference, tmp_path, capsys):
    run = tmp_path / "run"
    proc = _start(str(recipe), "--out-dir", str(run))
    assert _wait_until(lambda: _steps(run), proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    stop_line = next(line for line in out.splitlines() if line.startswith("SIGTERM received: stopped at step"))
    step = int(stop_line.split("stopped at step ")[1].split(",")[0])
    assert f"lrtrain train {run} --resume" in stop_line
    assert _steps(run)[-1] == step and load_checkpoint(list_checkpoints(run / "checkpoints")[-1])["step"] == step
    assert not (run / "summary.json").exists()
    _resume_in_process(run, capsys)
    _assert_same(run, reference)


@register_method("test_signal_at")
class SignalAt(Method):
    """Sends itself `signum` (`times` times) after step `at`, as a user's Ctrl-C would arrive."""

    def __init__(self, model, at: int, signum: int = int(signal.SIGINT), times: int = 1):
        super().__init__(model)
        self.at, self.signum, self.times = at, signum, times

    def after_step(self):
        super().after_step()
        if self.step == self.at:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


def _cfg(tmp_path, **method):
    return resolve({
        "out_dir": str(tmp_path / "run"),
        "data": {"name": "sample", "train_size": 64, "test_size": 32, "image_size": 8, "padding": 1,
                 "num_classes": 4, "batch_size": 16},
        "train": {"epochs": 2, "progress": False},
        "method": {"name": "test_signal_at", **method},
    })


def test_sigint_stops_after_the_step_with_a_mid_epoch_checkpoint_and_restores_the_handlers(tmp_path, capsys):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    torch.manual_seed(0)
    trainer = Trainer(_cfg(tmp_path, at=3))
    result = trainer.fit()
    checkpoint = tmp_path / "run" / "checkpoints" / "step_000000003.pt"
    assert result == {"finished": False, "step": 3, "checkpoint": str(checkpoint), "signal": "SIGINT"}
    state = load_checkpoint(checkpoint)
    assert (state["step"], state["epoch"], state["batch"]) == (3, 0, 3)  # mid-epoch: resumable there
    assert "SIGINT received: stopped at step 3" in capsys.readouterr().out
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    # A half-written file of a killed process is cleared by the resumed run; the run then finishes.
    stale = tmp_path / "run" / "checkpoints" / ".step_000000006.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    resumed = Trainer(_cfg(tmp_path, at=-1))
    assert resumed.fit(resume=True)["finished"] and not stale.exists()


def test_the_cli_exits_130_on_sigint_and_stops_at_once_on_a_second_one(tmp_path, capsys, monkeypatch):
    from lrtrain.train import stops

    monkeypatch.setattr(stops, "REPEAT_WINDOW_S", 0.0)  # the method's two signals come a moment apart
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent("""
        data: {name: sample, train_size: 64, test_size: 32, image_size: 8, num_classes: 4, batch_size: 16}
        model: {name: resnet20}
        train: {epochs: 1, progress: false}
        method: {name: test_signal_at, at: 2}
    """))
    assert cli.main(["train", str(recipe), "--out-dir", str(tmp_path / "a")]) == 130
    out = capsys.readouterr().out
    assert "SIGINT received: stopped at step 2" in out and f"lrtrain train {tmp_path / 'a'} --resume" in out
    # Twice: the second signal interrupts at once, without a traceback.
    assert cli.main(["train", str(recipe), "--out-dir", str(tmp_path / "b"), "--set", "method.times=2"]) == 130
    assert capsys.readouterr().err == "lrtrain: interrupted\n"
    # a second SIGTERM (a batch system's kill) exits as a process killed by it would
    assert cli.main(["train", str(recipe), "--out-dir", str(tmp_path / "c"), "--set", "method.times=2",
                     "--set", f"method.signum={int(signal.SIGTERM)}"]) == 128 + signal.SIGTERM
    capsys.readouterr()
    # one stop delivered twice at once (torchrun passes on the SIGTERM its workers also got) is one stop
    monkeypatch.setattr(stops, "REPEAT_WINDOW_S", 1.0)
    assert cli.main(["train", str(recipe), "--out-dir", str(tmp_path / "d"), "--set", "method.times=2",
                     "--set", f"method.signum={int(signal.SIGTERM)}"]) == 128 + signal.SIGTERM
    captured = capsys.readouterr()
    assert "SIGTERM received: stopped at step 2" in captured.out and "interrupted" not in captured.err
    assert list_checkpoints(tmp_path / "d" / "checkpoints")[-1].name == "step_000000002.pt"


_WRITER = """
import sys, time, torch
from lrtrain.files import atomic_write
from lrtrain.train.checkpoint import save_checkpoint

folder = sys.argv[1]
save_checkpoint(folder, 1, {"step": 1, "weights": torch.arange(10.0)}, keep=5)


class Stalling:
    # torch.save writes through this file; halfway it stalls, as a big write to a slow disk does.
    def __init__(self, f):
        self.f, self.written = f, 0

    def write(self, data):
        self.written += self.f.write(data)
        if self.written > 1 << 20:
            self.f.flush()
            print("writing", flush=True)
            time.sleep(120)
        return len(data)

    def flush(self):
        self.f.flush()


big = {"step": 2, "weights": torch.randn(1 << 20)}  # 4 MB
atomic_write(f"{folder}/step_000000002.pt", lambda f: torch.save(big, Stalling(f)))
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_whole(tmp_path):
    folder = tmp_path / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(folder)], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "writing\n", proc.communicate()
    _kill(proc)
    half = list(folder.glob(".step_000000002.pt.*.tmp"))
    assert len(half) == 1 and half[0].stat().st_size > 1 << 20  # the kill landed inside torch.save
    assert [p.name for p in list_checkpoints(folder)] == ["step_000000001.pt"]
    state = torch.load(folder / "step_000000001.pt", weights_only=True)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.arange(10.0))
