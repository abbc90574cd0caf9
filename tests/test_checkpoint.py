"""Checkpoints: atomic writes, retention, weights_only loading, and bit-for-bit resume."""

import csv
import random
import shutil

import pytest
import torch
from torch import nn

from lrtrain.config import resolve
from lrtrain.train import Trainer
from lrtrain.files import atomic_write
from lrtrain.train.checkpoint import list_checkpoints, load_checkpoint, rng_state, save_checkpoint, set_rng_state


class DropNet(nn.Sequential):
    """BatchNorm (buffers) and Dropout (the global RNG): both must survive a resume."""

    def __init__(self):
        super().__init__(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.2),
                         nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 4))


def make_cfg(out_dir, **train):
    return resolve({
        "out_dir": str(out_dir),
        "data": {"name": "sample", "train_size": 64, "test_size": 32, "image_size": 8, "padding": 1,
                 "num_classes": 4, "batch_size": 16},
        "optim": {"lr": 0.05, "nesterov": True, "weight_decay": 5e-4},
        "schedule": {"name": "cosine", "warmup_epochs": 0.5},
        "train": {"epochs": 3, "progress": False, "checkpoint_every": 3, "keep_checkpoints": 10, **train},
    })


def run(cfg, **fit):
    torch.manual_seed(1)
    trainer = Trainer(cfg, model=DropNet())
    return trainer, trainer.fit(**fit)


def _metrics(path):
    with open(path) as f:
        timing = ("epoch_time_s", "img_per_s")
        return [{k: v for k, v in row.items() if k not in timing} for row in csv.DictReader(f)]


@pytest.mark.parametrize("stop_at", [5, 8])  # inside the second epoch, and at its end
def test_a_resumed_run_ends_with_the_same_weights_bit_for_bit(tmp_path, stop_at):
    whole, whole_summary = run(make_cfg(tmp_path / "whole"))

    cfg = make_cfg(tmp_path / "parts")
    _, stopped = run(cfg, until_step=stop_at)
    assert stopped == {"finished": False, "step": stop_at,
                       "checkpoint": str(tmp_path / "parts" / "checkpoints" / f"step_{stop_at:09d}.pt")}
    torch.manual_seed(12345)  # whatever the RNG holds now, the checkpoint's states replace it
    resumed = Trainer(cfg, model=DropNet())
    summary = resumed.fit(resume=True)

    expected, got = whole.model.state_dict(), resumed.model.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    for a, b in zip(whole.optimizer.state.values(), resumed.optimizer.state.values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert _metrics(tmp_path / "whole" / "metrics.csv") == _metrics(tmp_path / "parts" / "metrics.csv")
    assert summary["final_acc"] == whole_summary["final_acc"] and summary["steps"] == 12


def test_an_evaluation_that_fails_keeps_the_trained_epoch_and_the_resume_redoes_only_its_end(
        tmp_path, monkeypatch, capsys):
    whole, whole_summary = run(make_cfg(tmp_path / "whole"))

    cfg = make_cfg(tmp_path / "parts", checkpoint_every=0)
    real = Trainer.evaluate
    calls = []

    def unreadable_in_epoch_2(self, model=None):
        calls.append(self.step)
        if self.step == 8:
            raise ValueError("cannot read image val/cat/7.jpg: image file is truncated")
        return real(self, model)

    monkeypatch.setattr(Trainer, "evaluate", unreadable_in_epoch_2)
    with pytest.raises(ValueError, match="cannot read image"):
        run(cfg)
    kept = tmp_path / "parts" / "checkpoints" / "step_000000008.pt"
    assert f"the trained epoch 2 is kept in {kept}" in capsys.readouterr().out
    state = load_checkpoint(kept)
    assert (state["step"], state["epoch"], state["batch"]) == (8, 1, 4)  # after the last step, not ended
    seconds, images = state["epoch_so_far"]  # the epoch's time and images, for its row once resumed
    assert seconds > 0 and images == 4 * cfg["data"]["batch_size"]
    monkeypatch.setattr(Trainer, "evaluate", real)
    torch.manual_seed(12345)
    resumed = Trainer(cfg, model=DropNet())
    summary = resumed.fit(resume=True)
    assert all(torch.equal(a, b) for a, b in zip(whole.model.state_dict().values(),
                                                  resumed.model.state_dict().values()))
    assert _metrics(tmp_path / "whole" / "metrics.csv") == _metrics(tmp_path / "parts" / "metrics.csv")
    assert summary["final_acc"] == whole_summary["final_acc"]
    with open(tmp_path / "parts" / "metrics.csv") as f:
        epoch_2 = list(csv.DictReader(f))[1]
    # plus the resumed process's epoch of no step (milliseconds)
    assert float(epoch_2["epoch_time_s"]) == pytest.approx(seconds, abs=0.1)
    assert float(epoch_2["img_per_s"]) == pytest.approx(images / float(epoch_2["epoch_time_s"]))


def test_checkpoints_are_plain_data_for_weights_only_loading(tmp_path):
    cfg = make_cfg(tmp_path, epochs=1)
    trainer, _ = run(cfg)
    path = list_checkpoints(tmp_path / "checkpoints")[-1]
    state = torch.load(path, weights_only=True)
    assert {"model", "optimizer", "method", "rng", "step", "epoch", "batch", "config", "history"} <= state.keys()
    assert state["config"] == cfg and state["step"] == 4 and state["epoch"] == 1 and state["batch"] == 0
    assert state["method"] == {"step": 4}
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in state["model"].items())


def test_every_n_steps_and_every_epoch_keeping_the_last_k(tmp_path):
    run(make_cfg(tmp_path, keep_checkpoints=3))
    # Every 3 steps (3, 6, 9) and every epoch (4, 8, 12); the newest three remain.
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == [
        "step_000000008.pt", "step_000000009.pt", "step_000000012.pt"]


def test_a_time_limit_stops_after_an_epoch_with_a_checkpoint(tmp_path):
    _, result = run(make_cfg(tmp_path, checkpoint_every=0), time_limit=0)
    assert result["finished"] is False and result["step"] == 4
    assert [load_checkpoint(p)["epoch"] for p in list_checkpoints(tmp_path / "checkpoints")] == [1]


def test_the_summary_names_the_code_of_every_session_that_trained_the_run(tmp_path, monkeypatch):
    import lrtrain.train.trainer as trainer_module

    for session, code in enumerate(["aaa1111", "bbb2222", "aaa1111"]):
        monkeypatch.setattr(trainer_module, "commit", lambda code=code: code)
        _, result = run(make_cfg(tmp_path, checkpoint_every=0), resume=session > 0, time_limit=0)
    assert result["finished"] and result["commit"] == "bbb2222, aaa1111"  # in the order last used


@pytest.mark.filterwarnings("ignore:train.epochs changed")
def test_a_run_shortened_on_resume_to_an_epoch_it_did_not_evaluate_evaluates_it_and_finishes(tmp_path):
    cfg = make_cfg(tmp_path, checkpoint_every=0, eval_every=2, epochs=4)
    _, stopped = run(cfg, until_step=12)  # the end of epoch 3, which eval_every=2 skipped
    assert stopped["finished"] is False
    shorter = make_cfg(tmp_path, checkpoint_every=0, eval_every=2, epochs=3)
    trainer, summary = run(shorter, resume=True)
    assert summary["finished"] and summary["steps"] == 12 and summary["epochs"] == 3
    assert summary["pre_finalize_acc"] == trainer.evaluate()["test_acc"]  # Dense: the compact model is it
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["test_acc"] != "" for r in rows] == [False, True, True]
    assert float(rows[-1]["test_acc"]) == summary["pre_finalize_acc"]


@pytest.mark.filterwarnings("ignore:train.epochs changed")
def test_a_resume_with_fewer_epochs_than_the_checkpoint_trained_is_refused(tmp_path):
    run(make_cfg(tmp_path, checkpoint_every=0, epochs=3), until_step=8)
    with pytest.raises(ValueError, match=r"has trained 2 epochs, more than this run's train.epochs=1: resume "
                                         r"with train.epochs >= 2"):
        run(make_cfg(tmp_path, checkpoint_every=0, epochs=1), resume=True)


@pytest.mark.filterwarnings("ignore:train.epochs changed")
def test_a_finished_run_trained_on_no_longer_shows_its_earlier_end_as_its_result(tmp_path, capsys):
    _, first = run(make_cfg(tmp_path, checkpoint_every=0, epochs=2))
    assert first["finished"] and (tmp_path / "summary.json").is_file() and (tmp_path / "compact.pt").is_file()
    _, stopped = run(make_cfg(tmp_path, checkpoint_every=0, epochs=4), resume=True, until_step=10)
    assert stopped["finished"] is False
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "compact.pt").exists()
    assert "its summary.json, compact.pt" in capsys.readouterr().out
    _, summary = run(make_cfg(tmp_path, checkpoint_every=0, epochs=4), resume=True)
    assert summary["finished"] and summary["steps"] == 16 and (tmp_path / "summary.json").is_file()


def test_until_a_step_already_reached_stops_without_training(tmp_path):
    run(make_cfg(tmp_path, checkpoint_every=0), until_step=6)
    trainer, result = run(make_cfg(tmp_path, checkpoint_every=0), resume=True, until_step=3)
    assert result["finished"] is False and result["step"] == trainer.step == 6  # it once took a step more
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_000000004.pt", "step_000000006.pt"]


def test_file_settings_given_as_paths_are_kept_as_text(tmp_path):
    from pathlib import Path

    weights = tmp_path / "dense.pt"
    torch.manual_seed(0)
    torch.save(DropNet().state_dict(), weights)
    cfg = make_cfg(tmp_path / "run", epochs=1)
    cfg["model"]["weights"] = Path(weights)
    trainer, summary = run(cfg)
    assert summary["finished"] and trainer.cfg["model"]["weights"] == str(weights)
    assert "dense.pt" in (tmp_path / "run" / "config.yaml").read_text()
    assert load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])["config"]["model"]["weights"] \
        == str(weights)  # weights_only loading reads it back


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path, capsys):
    _, summary = run(make_cfg(tmp_path, epochs=1), resume=True)  # a new folder: nothing to say
    assert summary["finished"] and "starting from scratch" not in capsys.readouterr().out
    for f in tmp_path.iterdir():  # a folder a run was started in, its checkpoints gone: said
        if f.name != "config.yaml":
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    _, summary = run(make_cfg(tmp_path, epochs=1), resume=True)
    assert summary["finished"] and "no checkpoint in" in capsys.readouterr().out


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "file.pt"
    atomic_write(target, lambda f: f.write(b"old"))

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.pt"]  # no temporary file left behind


def test_save_checkpoint_keeps_the_newest(tmp_path):
    for step in (10, 2, 30, 4):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(tmp_path)] == [10, 30]


def test_a_damaged_checkpoint_is_named(tmp_path):
    path = tmp_path / "step_000000001.pt"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=f"cannot read checkpoint {path}"):
        load_checkpoint(path)


def test_rng_state_round_trip():
    state = rng_state()
    first = (torch.rand(3), random.random())
    set_rng_state(state)
    again = (torch.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and first[1] == again[1]


def _plain(value, where="checkpoint"):
    """Assert `value` is plain data all the way down: what weights_only loading allows and nothing else."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, (str, int)), f"{where}: key {k!r}"
            _plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _plain(v, f"{where}[{i}]")
    else:
        assert value is None or isinstance(value, (torch.Tensor, bool, int, float, str)), \
            f"{where} is a {type(value).__name__}"


@pytest.mark.parametrize("method, check", [
    ({"name": "trp", "period": 3}, lambda s: s["pending"] and s["ranks"]),           # after a projection
    ({"name": "lrpet", "goal": 0.5, "period": 3}, lambda s: s["last_projection"] == s["step"]),
    ({"name": "elrt", "rank": "ratio:0.5", "skip": []}, lambda s: s["ranks"]),
    ({"name": "svd_finetune", "rank": "ratio:0.5", "dense_fraction": 0.34}, lambda s: s["swapped"]),
])
def test_every_methods_checkpoints_hold_plain_data_only(tmp_path, method, check):
    cfg = make_cfg(tmp_path, epochs=2, checkpoint_every=3)
    cfg["method"] = method
    run(cfg)
    paths = list_checkpoints(tmp_path / "checkpoints")
    # Steps 3, 4 (end of epoch 1: the SVD fine-tuning swap), 6 (a TRP/LRPET projection) and 8.
    assert [p.name for p in paths] == [f"step_00000000{i}.pt" for i in (3, 4, 6, 8)]
    states = [torch.load(path, weights_only=True) for path in paths]
    for path, state in zip(paths, states):
        _plain(state, path.name)
    assert check(states[2]["method"]), states[2]["method"]
    # The compact model too: plain data, rebuilt without pickled code.
    _plain(torch.load(tmp_path / "compact.pt", weights_only=True), "compact.pt")


def test_a_run_resumed_in_another_memory_layout_gets_momentum_laid_out_like_its_weights(tmp_path):
    run(make_cfg(tmp_path, channels_last=False), until_step=5)
    path = list_checkpoints(tmp_path / "checkpoints")[-1]
    state = torch.load(path, weights_only=True)
    for group in state["optimizer"]["param_groups"]:
        group["fused"] = True  # as a CUDA run saves it
    torch.save(state, path)
    torch.manual_seed(1)
    trainer = Trainer(make_cfg(tmp_path, channels_last=True), model=DropNet())
    trainer.load_checkpoint(path)
    params = list(trainer.model.parameters())
    assert params[0].is_contiguous(memory_format=torch.channels_last) and not params[0].is_contiguous()
    for i, p in enumerate(params):
        momentum = trainer.optimizer.state[p]["momentum_buffer"]
        assert momentum.stride() == p.stride()
        assert torch.equal(momentum, state["optimizer"]["state"][i]["momentum_buffer"])
    assert all(g["fused"] is None for g in trainer.optimizer.param_groups)  # this device's choice (CPU)
