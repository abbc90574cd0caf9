"""The training loop: learning, schedules, method hooks, divergence guard, run directory, CLI."""

import copy
import csv
import json
import time

import pytest
import torch
from torch import nn

from lrtrain import cli, models
from lrtrain.config import ConfigError, resolve
from lrtrain.methods import Method, register_method
from lrtrain.train import DivergenceError, Schedule, Trainer
from lrtrain.train.checkpoint import list_checkpoints, load_checkpoint


class TinyNet(nn.Sequential):
    def __init__(self, classes: int = 4):
        super().__init__(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes))


def make_cfg(tmp_path, train_size=128, epochs=2, **sections):
    recipe = {
        "out_dir": str(tmp_path / "run"),
        "data": {"name": "sample", "train_size": train_size, "test_size": 64, "image_size": 12, "padding": 1,
                 "num_classes": 4, "batch_size": 32, "eval_batch_size": 64},
        "optim": {"lr": 0.1},
        "schedule": {"name": "constant"},
        "train": {"epochs": epochs, "progress": False},
    }
    for section, values in sections.items():
        recipe[section] = {**recipe.get(section, {}), **values} if isinstance(values, dict) else values
    return resolve(recipe)


def fit(cfg, model=None, **kw):
    torch.manual_seed(0)
    trainer = Trainer(cfg, model=model or TinyNet())
    return trainer, trainer.fit(**kw)


def test_training_learns_the_generated_set_and_fills_the_run_directory(tmp_path):
    cfg = make_cfg(tmp_path, train_size=384, epochs=4)
    trainer, summary = fit(cfg)
    run = tmp_path / "run"
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    first, last = float(rows[0]["train_loss"]), float(rows[-1]["train_loss"])
    assert last < first - 0.3
    assert summary["final_acc"] > 60  # four balanced classes: chance is 25 %
    assert summary["best_acc"] == max(float(r["test_acc"]) for r in rows)
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["dense"] == on_disk["compact"] and on_disk["dense"]["params"] == sum(
        p.numel() for p in TinyNet().parameters())
    assert on_disk["steps"] == 4 * 12 and on_disk["device"].startswith("cpu")
    assert (run / "config.yaml").read_text().startswith("name: run")
    compact = torch.load(run / "compact.pt", weights_only=True)
    assert compact["arch"]["input_size"] == [1, 3, 12, 12] and compact["arch"]["method"] == "dense"
    assert compact["state_dict"].keys() == trainer.model.state_dict().keys()


def test_evaluate_uses_eval_mode_and_restores_training_mode(tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(make_cfg(tmp_path), model=TinyNet())
    trainer.model.train()
    first = trainer.evaluate()
    assert trainer.model.training
    assert trainer.evaluate() == first  # BN running statistics were not updated


@pytest.mark.parametrize("schedule, expected", [
    (Schedule("step", 100, milestones=(30, 60), gamma=0.1), {0: 1.0, 29: 1.0, 30: 0.1, 60: 0.01, 99: 0.01}),
    (Schedule("cosine", 101), {0: 1.0, 50: 0.5, 100: 0.0}),
    (Schedule("cosine", 101, min_factor=0.1), {100: 0.1}),
    (Schedule("constant", 10, warmup_steps=4), {0: 0.25, 3: 1.0, 9: 1.0}),
    (Schedule("step", 100, milestones=(50,), warmup_steps=10), {0: 0.1, 4: 0.5, 10: 1.0, 50: 0.1}),
])
def test_schedules(schedule, expected):
    assert {s: schedule(s) for s in expected} == pytest.approx(expected)


def test_the_trainer_sets_the_scheduled_rate_at_every_step(tmp_path):
    cfg = make_cfg(tmp_path, epochs=3, schedule={"name": "step", "milestones": [1, 2], "gamma": 0.5,
                                                   "warmup_epochs": 0.5})
    _, _ = fit(cfg)
    with open(tmp_path / "run" / "metrics.csv") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    assert lrs == pytest.approx([0.1, 0.05, 0.025])  # the rate of each epoch's last step


def test_weight_decay_can_spare_norm_and_bias_parameters(tmp_path):
    torch.manual_seed(0)
    cfg = make_cfg(tmp_path, optim={"no_decay_norm_bias": True, "weight_decay": 5e-4})
    trainer = Trainer(cfg, model=TinyNet())
    decayed, spared = trainer.optimizer.param_groups
    assert decayed["weight_decay"] == 5e-4 and spared["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in spared["params"])
    assert len(decayed["params"]) + len(spared["params"]) == len(list(trainer.model.parameters()))


@register_method("test_recording")
class Recording(Method):
    """Logs ranks every `period` steps, asks for an optimizer rebuild, and finalizes to a smaller classifier."""

    def __init__(self, model, period: int = 3, rebuild_at: int = -1):
        super().__init__(model)
        self.period, self.rebuild_at, self.calls = period, rebuild_at, []

    def setup(self, steps_per_epoch, total_steps):
        super().setup(steps_per_epoch, total_steps)
        self.calls.append(("setup", steps_per_epoch, total_steps))

    def before_step(self):
        self.calls.append(("before", all(p.grad is not None for p in self.model.parameters())))

    def after_step(self):
        super().after_step()
        self.calls.append(("after", self.step))
        if self.step % self.period == 0:
            self.rank_log.append({"step": self.step, "layer": "8", "rank": 2, "max_rank": 4})
        self.rebuild_optimizer = self.step == self.rebuild_at

    def finalize(self):
        fc = self.model[-1]
        u, s, vh = torch.linalg.svd(fc.weight.detach(), full_matrices=False)
        first, second = nn.Linear(32, 2, bias=False), nn.Linear(2, 4)
        with torch.no_grad():
            first.weight.copy_(vh[:2] * s[:2, None])
            second.weight.copy_(u[:, :2])
            second.bias.copy_(fc.bias)
        self.model[-1] = nn.Sequential(first, second)
        return self.model

    def ranks(self):
        return {"8": 2}


def test_method_hooks_run_in_protocol_order_and_rank_rows_reach_ranks_csv(tmp_path):
    cfg = make_cfg(tmp_path, method={"name": "test_recording", "period": 3})
    trainer, summary = fit(cfg)
    calls = trainer.method.calls
    assert calls[0] == ("setup", 4, 8)
    assert calls[1:] == [c for step in range(1, 9) for c in (("before", True), ("after", step))]
    with open(tmp_path / "run" / "ranks.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [3]  # step 6 logged the same rank again
    assert trainer.method.rank_log == []
    assert summary["compact"]["flops"] < summary["dense"]["flops"]
    assert summary["compact"]["flops"] == summary["dense"]["flops"] - 32 * 4 + (32 * 2 + 2 * 4)
    assert summary["ranks"] == {"8": 2}
    module = torch.load(tmp_path / "run" / "compact_module.pt", weights_only=False)
    assert isinstance(module[-1], nn.Sequential)
    assert trainer.evaluate(module)["test_acc"] == pytest.approx(summary["final_acc"])


def test_an_optimizer_rebuild_keeps_the_momentum_of_surviving_parameters(tmp_path):
    _, plain = fit(make_cfg(tmp_path / "a", method={"name": "test_recording"}))
    rebuilt_trainer, rebuilt = fit(make_cfg(tmp_path / "b", method={"name": "test_recording", "rebuild_at": 3}))
    assert rebuilt_trainer.method.rebuild_optimizer is False
    a = torch.load(tmp_path / "a" / "run" / "compact.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "run" / "compact.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@register_method("test_swap")
class Swap(Method):
    """Replaces its model by a copy at step 2: the trainer must train the new one."""

    def after_step(self):
        super().after_step()
        if self.step == 2:
            self.model = copy.deepcopy(self.model)
            self.swapped = copy.deepcopy(self.model.state_dict())


def test_the_trainer_follows_a_method_that_replaces_its_model(tmp_path):
    trainer, _ = fit(make_cfg(tmp_path, method={"name": "test_swap"}))
    assert trainer.model is trainer.method.model
    assert trainer.optimizer.param_groups[0]["params"][0] is next(trainer.method.model.parameters())
    changed = trainer.method.model.state_dict()
    assert not torch.equal(changed["0.weight"], trainer.method.swapped["0.weight"])


@register_method("test_grow")
class Grow(Method):
    """After the last step factorizes the classifier into two new layers (which no step then gives a
    momentum buffer); the convolutions and BN survive with theirs."""

    def after_step(self):
        super().after_step()
        if self.step == self.total_steps:
            self.model[-1] = nn.Sequential(nn.Linear(32, 3, bias=False), nn.Linear(3, 4))
            self.rebuild_optimizer = True


def test_a_rebuild_that_adds_parameters_gives_them_zero_momentum_so_fused_sgd_accepts_it(tmp_path):
    trainer, _ = fit(make_cfg(tmp_path, method={"name": "test_grow"}))
    opt = trainer.optimizer
    params = [p for group in opt.param_groups for p in group["params"]]
    assert all(torch.is_tensor(opt.state[p].get("momentum_buffer")) for p in params)
    # the CUDA trainer's fused SGD: a mix of carried and missing buffers raised a TypeError here
    for group in opt.param_groups:
        group["fused"] = True
    for p in params:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in params]
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, params))


def test_resuming_a_checkpoint_saved_right_after_a_swap_fills_the_missing_momentum(tmp_path):
    cfg = make_cfg(tmp_path, method={"name": "test_grow"})
    trainer, _ = fit(cfg)
    state = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    new = [i for i, p in enumerate(trainer.optimizer.param_groups[0]["params"]) if p.shape in {(3, 32), (4, 3)}]
    for i in new:  # as written by a run before the fix: the new layers had no buffer yet
        del state["optimizer"]["state"][i]
    resumed = Trainer(cfg, model=TinyNet())
    resumed.method.model[-1] = nn.Sequential(nn.Linear(32, 3, bias=False), nn.Linear(3, 4))
    resumed.load_checkpoint("saved", state)
    opt = resumed.optimizer
    assert all(torch.is_tensor(opt.state[p].get("momentum_buffer")) for g in opt.param_groups for p in g["params"])


def test_a_zero_momentum_buffer_is_exactly_sgds_first_step():
    torch.manual_seed(0)
    fresh, filled = nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(5, 3))
    with torch.no_grad():
        filled.copy_(fresh)
    a = torch.optim.SGD([fresh], lr=0.1, momentum=0.9, weight_decay=1e-4)
    b = torch.optim.SGD([filled], lr=0.1, momentum=0.9, weight_decay=1e-4)
    b.state[filled]["momentum_buffer"] = torch.zeros_like(filled)
    for _ in range(3):
        g = torch.randn(5, 3)
        fresh.grad, filled.grad = g.clone(), g.clone()
        a.step(), b.step()
        assert torch.equal(fresh, filled)
    assert torch.equal(a.state[fresh]["momentum_buffer"], b.state[filled]["momentum_buffer"])


@register_method("test_nan")
class PoisonAt(Method):
    """Writes NaN into the first weight after step `at` (``statistics=True``: into the first BatchNorm's
    running variance, which only the checkpoint's weight check sees)."""

    def __init__(self, model, at: int, statistics: bool = False):
        super().__init__(model)
        self.at, self.statistics = at, statistics

    def after_step(self):
        super().after_step()
        if self.step == self.at:
            with torch.no_grad():
                target = (next(m for m in self.model.modules() if isinstance(m, nn.BatchNorm2d)).running_var
                          if self.statistics else next(self.model.parameters()))
                target.fill_(float("nan"))


@pytest.mark.parametrize("every, at, kept, rows", [(2, 3, [2], 0), (0, 5, [4], 1), (0, 4, [], 1)])
def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, every, at, kept, rows):
    cfg = make_cfg(tmp_path, epochs=3, method={"name": "test_nan", "at": at}, train={"checkpoint_every": every})
    with pytest.raises(DivergenceError) as err:
        fit(cfg)
    message = str(err.value)
    assert "NaN/Inf" in message and "Lower optim.lr" in message
    checkpoints = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [load_checkpoint(p)["step"] for p in checkpoints] == kept
    if kept:
        assert str(checkpoints[-1]) in message
        assert all(torch.isfinite(t).all() for t in load_checkpoint(checkpoints[-1])["model"].values())
    else:
        assert "no checkpoint was saved" in message
    metrics = tmp_path / "run" / "metrics.csv"
    assert (len(metrics.read_text().splitlines()) - 1 if metrics.exists() else 0) == rows


def test_a_run_directory_is_not_overwritten_by_accident(tmp_path, capsys):
    cfg = make_cfg(tmp_path, epochs=1)
    fit(cfg)
    with pytest.raises(ValueError, match="already holds a run .* --resume .* --overwrite"):
        fit(cfg)
    _, summary = fit(cfg, overwrite=True)
    assert summary["finished"] and len(list_checkpoints(tmp_path / "run" / "checkpoints")) == 1
    # a finished run kept lean (its checkpoints deleted, as the committed reproduction runs are)
    run = tmp_path / "run"
    for path in list_checkpoints(run / "checkpoints"):
        path.unlink()
    kept = {f: (run / f).read_bytes() for f in ("summary.json", "compact.pt", "metrics.csv")}
    with pytest.raises(ValueError, match=r"already holds a run \(metrics.csv, summary.json, compact.pt\)"):
        fit(cfg)
    with pytest.raises(ValueError, match=r"holds a finished run \(summary.json\) and no checkpoint to resume from"):
        fit(cfg, resume=True)
    assert {f: (run / f).read_bytes() for f in kept} == kept  # nothing lost
    (run / "summary.json").unlink()  # results, no checkpoint: nothing says --resume would continue them
    with pytest.raises(ValueError, match=r"already holds a run \(metrics.csv, compact.pt\); no checkpoint to "
                                         r"continue it from: pass --overwrite"):
        fit(cfg)
    with pytest.raises(ValueError, match=r"holds a run's metrics.csv, compact.pt and no checkpoint to resume from"):
        fit(cfg, resume=True)
    assert {f: (run / f).read_bytes() for f in kept if f != "summary.json"} == \
        {f: kept[f] for f in kept if f != "summary.json"}
    for name in ("metrics.csv", "compact.pt", "compact_module.pt", "config.yaml", "ranks.csv"):
        (run / name).unlink(missing_ok=True)
    capsys.readouterr()  # a folder with only its checkpoints gone: --resume starts it, and says so
    _, summary = fit(cfg, resume=True)
    assert summary["finished"] and "no checkpoint in" in capsys.readouterr().out


def test_resuming_a_finished_run_changes_nothing_unless_a_setting_changed(tmp_path, capsys):
    cfg = make_cfg(tmp_path, epochs=1)
    _, first = fit(cfg)
    run = tmp_path / "run"
    files = {f: (run / f).read_bytes() for f in ("summary.json", "compact.pt", "metrics.csv")}
    capsys.readouterr()
    _, again = fit(cfg, resume=True)
    assert again == first and {f: (run / f).read_bytes() for f in files} == files
    assert "is finished, with these settings: nothing to train" in capsys.readouterr().out
    cfg["train"]["bn_recalibrate"] = 2  # finalized again, with the new setting
    _, refinalized = fit(cfg, resume=True)
    assert refinalized["bn_recalibrated_batches"] == 2 and refinalized["steps"] == first["steps"]


def _recipe(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


TINY_RESNET = """
model: {name: resnet20}
data: {name: sample, train_size: 64, test_size: 32, image_size: 8, num_classes: 4, batch_size: 32}
train: {epochs: 1, progress: false}
"""


def test_cli_trains_a_registered_model_end_to_end(tmp_path, capsys):
    recipe = _recipe(tmp_path, TINY_RESNET)
    out = tmp_path / "out"
    assert cli.main(["train", recipe, "--out-dir", str(out), "--set", "optim.lr=0.05"]) == 0
    # the files there, named as they are (a dense run logs no ranks.csv)
    assert (f"results in {out}/: config.yaml, metrics.csv, summary.json, compact.pt, compact_module.pt (final "
            in capsys.readouterr().out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "resnet20" and summary["dense"]["params"] == 269722 - 6 * 65
    assert cli.main(["train", recipe, "--out-dir", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli.main(["train", str(out), "--resume"]) == 0  # a run directory is a recipe; nothing left to train
    assert "resumed from" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--set", "optim.lrr=1"],
     "lrtrain: error: --set optim.lrr=1: unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
    (["--set", "data.name=cifar10", "--data-dir", "/nowhere"], "lrtrain: error: CIFAR-10 not found: looked for"),
    (["--set", "method.name=trpp"], "lrtrain: error: unknown method 'trpp'"),
    (["--set", "method.period=3"], "lrtrain: error: method 'dense' takes no parameter 'period'"),
    (["--set", "model.name=resnet21"], "lrtrain: error: unknown model 'resnet21'"),
])
def test_cli_reports_user_errors_in_one_line(tmp_path, capsys, args, message):
    recipe = _recipe(tmp_path, TINY_RESNET)
    assert cli.main(["train", recipe, "--out-dir", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_cli_debug_shows_the_traceback(tmp_path):
    recipe = _recipe(tmp_path, TINY_RESNET)
    with pytest.raises(ValueError, match="unknown method"):
        cli.main(["train", recipe, "--set", "method.name=nope", "--debug"])


def test_the_demo_uses_cifar10_when_present_else_the_generated_set(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LRTRAIN_DATA", raising=False)
    import lrtrain.data.cifar as cifar

    monkeypatch.chdir(tmp_path)  # no ../shared/data from here, nor from the project
    monkeypatch.setattr(cifar, "_PROJECT_ROOT", tmp_path)
    assert cli.demo_recipe()["data"]["name"] == "sample"
    monkeypatch.setattr(cli, "_fit", lambda *a, **k: 0)
    assert cli.main(["demo", "--out-dir", str(tmp_path / "demo")]) == 0
    said = capsys.readouterr().out
    assert said.startswith("note: CIFAR-10 not found: looked for") and "generated sample set instead" in said
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found"):  # a place was named: no silent fallback
        cli.demo_recipe(str(tmp_path))
    monkeypatch.setenv("LRTRAIN_DATA", str(tmp_path / "typo"))
    with pytest.raises(FileNotFoundError, match="typo"):
        cli.demo_recipe()
    monkeypatch.delenv("LRTRAIN_DATA")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).touch()
    demo = cli.demo_recipe(str(tmp_path))
    assert demo["data"]["name"] == "cifar10" and demo["data"]["dir"] == str(tmp_path)
    assert demo["method"] == cli.DEMO_METHOD and demo["model"]["name"] == "resnet20"


@pytest.mark.parametrize("method", [{"name": "elrt", "rank": "ratio:0.5", "input_size": [1, 3, 12, 12]},
                                    {"name": "lrpet", "goal": 0.5, "period": 3, "input_size": [1, 3, 12, 12]}])
def test_ranks_csv_of_a_resumed_run_equals_the_uninterrupted_runs(tmp_path, method):
    def ranks_csv(run):
        return (run / "ranks.csv").read_text()

    fit(make_cfg(tmp_path / "whole", method=method))
    parts = make_cfg(tmp_path / "parts", method=method)
    fit(parts, until_step=5)  # mid-epoch: ELRT logged its ranks at construction, LRPET at step 3
    fit(parts, resume=True)
    assert ranks_csv(tmp_path / "parts" / "run") == ranks_csv(tmp_path / "whole" / "run")
    # a first session killed before its first checkpoint, started again from scratch: no stale rows
    fresh = make_cfg(tmp_path / "fresh", method=method)
    (tmp_path / "fresh" / "run").mkdir(parents=True)
    (tmp_path / "fresh" / "run" / "ranks.csv").write_text(ranks_csv(tmp_path / "whole" / "run"))
    fit(fresh)
    assert ranks_csv(tmp_path / "fresh" / "run") == ranks_csv(tmp_path / "whole" / "run")


def test_a_hand_written_config_is_checked_and_completed():
    with pytest.raises(ConfigError, match=r"Trainer config: unknown key 'optim.lrr' \(did you mean 'optim.lr'\?\)"):
        Trainer({"optim": {"lrr": 0.1}})
    trainer = Trainer({"data": {"name": "sample", "train_size": 64, "test_size": 32, "image_size": 8,
                                "batch_size": 32}, "train": {"epochs": 1, "progress": False},
                       "schedule": {"name": "cosine"}})
    assert trainer.cfg["optim"]["lr"] == resolve({})["optim"]["lr"] and trainer.steps_per_epoch == 2


@pytest.mark.parametrize("steps, total, match", [(0, 4, r"steps_per_epoch must be an integer >= 1, got 0 \(an "
                                                          r"empty data loader\?\)"),
                                                  (-1, 4, "steps_per_epoch must be an integer >= 1, got -1"),
                                                  (2, 0, "total_steps must be an integer >= 1, got 0"),
                                                  (2.5, 5, "steps_per_epoch must be an integer >= 1, got 2.5")])
def test_setup_refuses_an_empty_or_negative_run(steps, total, match):
    from lrtrain.methods.svd_finetune import SVDFinetune

    with pytest.raises(ValueError, match=rf"SVDFinetune.setup: {match}"):
        SVDFinetune(models.create("resnet20")).setup(steps, total)


def test_a_folder_run_keeps_its_class_names_beside_the_model(tmp_path):
    from PIL import Image

    from lrtrain import export

    for split in ("train", "val"):
        for k, cls in enumerate(["zebra", "Ant", "bee"]):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (12, 12), (80 * k, 30 * i, 9)).save(tmp_path / "data" / split / cls / f"{i}.png")
    cfg = resolve({"out_dir": str(tmp_path / "run"), "model": {"name": "resnet20"},
                   "data": {"name": "folder", "dir": str(tmp_path / "data"), "image_size": 8, "batch_size": 3,
                            "eval_batch_size": 3, "workers": 0},
                   "schedule": {"name": "cosine"}, "train": {"epochs": 1, "progress": False}})
    summary = Trainer(cfg).fit()
    assert summary["classes"] == ["Ant", "bee", "zebra"] and summary["num_classes"] == 3  # label order
    _, arch = export.load_with_arch(tmp_path / "run" / "compact.pt")
    assert arch["classes"] == summary["classes"]


def test_an_epoch_resumed_mid_way_counts_the_time_and_images_of_both_parts(tmp_path, monkeypatch, capsys):
    clock = iter(range(0, 10**6, 3))  # every reading of the clock 3 s after the last
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(clock)))
    cfg = make_cfg(tmp_path, epochs=1)  # 4 steps of 32 images
    fit(cfg, until_step=3)
    assert "; continue (epoch 1, 3 of its 4 batches done) with: lrtrain train" in capsys.readouterr().out
    saved = torch.load(list_checkpoints(tmp_path / "run" / "checkpoints")[-1], weights_only=True)
    assert saved["batch"] == 3 and saved["epoch_so_far"][1] == 96 and saved["epoch_so_far"][0] > 0
    fit(cfg, resume=True)
    assert "(step 3, epoch 1, 3 of its 4 batches done)" in capsys.readouterr().out
    with open(tmp_path / "run" / "metrics.csv") as f:
        (row,) = list(csv.DictReader(f))
    seconds = float(row["epoch_time_s"])
    assert seconds > saved["epoch_so_far"][0]  # the first part's seconds, and the resumed part's
    assert float(row["img_per_s"]) * seconds == pytest.approx(128)  # all four batches, not the last one only


def test_a_run_resumed_on_other_training_images_says_so(tmp_path, capsys):
    from test_data import _two_class_folder

    _two_class_folder(tmp_path / "images")
    cfg = make_cfg(tmp_path, epochs=2, data={"name": "folder", "dir": str(tmp_path / "images"), "workers": 0,
                                             "batch_size": 2, "eval_batch_size": 2, "image_size": 8,
                                             "train_size": None, "test_size": None, "num_classes": 10})
    fit(cfg, until_step=3)
    (tmp_path / "images" / "train" / "ant" / "0.png").unlink()  # the data changed while the run waited
    capsys.readouterr()
    fit(cfg, resume=True)
    out = capsys.readouterr().out
    assert "was trained on 6 training images, the data now hold 5: from here on each epoch's order" in out


def test_auto_compile_mode_replays_cuda_graphs_on_one_gpu_only(monkeypatch):
    from lrtrain.train import trainer

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert trainer.compile_mode("auto", cuda, distributed=False) == "reduce-overhead"
    assert trainer.compile_mode("auto", cuda, distributed=True) is None  # DDP's all-reduce inside backward
    assert trainer.compile_mode("auto", cpu, distributed=False) is None  # torch's default mode
    assert trainer.compile_mode("default", cuda, distributed=False) is None
    assert trainer.compile_mode("max-autotune", cpu, distributed=False) == "max-autotune"
    assert resolve({})["train"]["compile_mode"] == "auto"
    modes = []  # what the trainer hands torch.compile
    monkeypatch.setattr(torch, "compile", lambda net, mode=None: modes.append(mode) or net)
    cfg = resolve({"data": {"name": "sample", "train_size": 16, "test_size": 8, "image_size": 8, "batch_size": 8},
                   "model": {"name": "resnet20"}, "train": {"epochs": 1, "compile": True, "progress": False}})
    Trainer(cfg)
    assert modes == [None]  # on this CPU: the default mode


def test_the_stop_signal_received_is_the_trainers_stop_signal(tmp_path):
    """`Trainer.stop_signal` (public before the signal handling moved to train/stops.py) still says it."""
    import signal

    trainer = Trainer(make_cfg(tmp_path, epochs=1))
    assert trainer.stop_signal is None
    with trainer.stops:  # as during fit: the handler records the first stop signal
        signal.raise_signal(signal.SIGTERM)
        assert trainer.stop_signal == signal.SIGTERM
