"""Bad input through the command line: one line ``lrtrain: error: ...`` naming the problem, no traceback.

(Recipe-level messages are tested in test_config.py, override messages and a missing CIFAR directory in
test_trainer.py; here each kind of mistake goes through `cli.main` as a user would make it.)
"""

import pickle
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lrtrain import cli
from lrtrain.config import load_recipe, resolve
from lrtrain.train import OutOfMemory, Trainer
from lrtrain.train.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]

TINY = """
model: {name: resnet20}
data: {name: sample, train_size: 64, test_size: 32, image_size: 8, num_classes: 4, batch_size: 16}
train: {epochs: 1, progress: false}
"""


def _recipe(tmp_path, text=TINY, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def _fails(capsys, argv, status=2) -> str:
    """Run the command, expect `status` and one line on stderr; return that line."""
    assert cli.main(argv) == status
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("lrtrain: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err + captured.out
    return err.strip()


@pytest.mark.parametrize("text, message", [
    ("model: {name: resnet20\ntrain: [", "recipe.yaml: not valid YAML: "),
    ("optim:\n  lrr: 0.1\n", "recipe.yaml: unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
    ("train:\n  epoch: 3\n", "recipe.yaml: unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
    ("train:\n  epochs: ten\n", "recipe.yaml: train.epochs must be an integer, got 'ten'"),
    ("data:\n  augment: maybe\n", "recipe.yaml: data.augment must be true/false, got 'maybe'"),
    ("optim: 0.1\n", "recipe.yaml: optim must be a mapping, got 0.1"),
    ("# nothing yet\n", "recipe.yaml: the recipe is empty (a mapping of sections is expected"),
])
def test_recipe_mistakes(tmp_path, capsys, text, message):
    err = _fails(capsys, ["train", _recipe(tmp_path, text), "-o", str(tmp_path / "run")])  # -o: --out-dir
    assert message in err and not (tmp_path / "run").exists()


def test_missing_recipe_and_missing_image_folder(tmp_path, capsys, monkeypatch):
    assert "no recipe file" in _fails(capsys, ["train", str(tmp_path / "nope.yaml")])
    recipe = _recipe(tmp_path)
    err = _fails(capsys, ["train", recipe, "--set", "data.name=folder", "--data-dir", str(tmp_path / "nowhere")])
    nowhere = tmp_path / "nowhere"
    assert f"image folder not found (no folder {nowhere}): expected {nowhere / 'train'}" in err
    monkeypatch.delenv("LRTRAIN_DATA", raising=False)
    assert "data.name folder needs data.dir" in _fails(capsys, ["train", recipe, "--set", "data.name=folder"])


def _fake_cifar(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                         b"labels": list(range(10)) * 2}, f)
    return folder


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_cifar_batch_is_named(tmp_path, capsys, damage):
    folder = _fake_cifar(tmp_path)
    batch = folder / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:1000] if damage == "truncated" else b"\x00garbage")
    err = _fails(capsys, ["train", _recipe(tmp_path), "--set", "data.name=cifar10", "--data-dir", str(tmp_path),
                          "--out-dir", str(tmp_path / "run")])
    assert f"corrupt CIFAR file {batch}" in err


@pytest.fixture
def run_dir(tmp_path, capsys):
    """A finished tiny run with checkpoints at steps 2, 4 (end of the epoch)."""
    run = tmp_path / "run"
    assert cli.main(["train", _recipe(tmp_path), "--out-dir", str(run), "--set", "train.checkpoint_every=2"]) == 0
    capsys.readouterr()
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_000000002.pt", "step_000000004.pt"]
    return run


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "text", "one byte"])
def test_a_damaged_checkpoint_on_resume_is_named_with_the_way_out(run_dir, capsys, damage):
    newest, older = list_checkpoints(run_dir / "checkpoints")[::-1]
    data = newest.read_bytes()
    newest.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00not a checkpoint", "empty": b"",
                        "text": b"junk\n", "one byte": b"j"}[damage])
    err = _fails(capsys, ["train", str(run_dir), "--resume"])
    assert f"cannot read checkpoint {newest}" in err
    assert err.endswith(f"move it away to resume from the one before, {older}")
    older.unlink()
    err = _fails(capsys, ["train", str(run_dir), "--resume"])
    assert err.endswith("it is the run's only checkpoint: start again with --overwrite")


def test_a_moved_run_directory_resumes_where_it_is_now(tmp_path, capsys):
    run = tmp_path / "first"
    recipe = _recipe(tmp_path, TINY.replace("epochs: 1", "epochs: 2"))
    assert cli.main(["train", recipe, "--out-dir", str(run), "--time-limit", "0"]) == 0  # stops after epoch 1
    moved = tmp_path / "moved"
    run.rename(moved)
    capsys.readouterr()
    assert cli.main(["train", str(moved), "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"resumed from {moved / 'checkpoints'}" in out and (moved / "summary.json").exists() and not run.exists()


def test_resuming_by_another_spelling_of_the_same_folder_notes_no_change(tmp_path, capsys, monkeypatch):
    recipe = _recipe(tmp_path, TINY.replace("epochs: 1", "epochs: 2"))
    assert cli.main(["train", recipe, "--out-dir", str(tmp_path / "run"), "--time-limit", "0"]) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["train", "run", "--resume"]) == 0  # relative, where the run was given absolute
    assert "changed settings" not in capsys.readouterr().out


@pytest.mark.parametrize("device, message", [
    ("foo", "device 'foo' is not a device name (auto, cpu, cuda, cuda:N)"),
    ("cuda", "device 'cuda': this machine has no CUDA device (use cpu or auto)"),
    ("mps", "device 'mps': lrtrain runs on cpu or cuda (auto, cpu, cuda, cuda:N)"),
])
def test_a_device_this_machine_cannot_use_is_one_line(tmp_path, capsys, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert _fails(capsys, ["train", _recipe(tmp_path), "--set", f"train.device={device}"]).endswith(message)


def test_writing_an_export_onto_a_folder_is_one_line(run_dir, tmp_path, capsys):
    (tmp_path / "a_folder").mkdir()
    err = _fails(capsys, ["export", str(run_dir), "--format", "state_dict", "-o", str(tmp_path / "a_folder")])
    assert "a_folder" in err


@pytest.mark.parametrize("extra", [["--format", "torchscript"], ["--format", "onnx", "--deploy"]])
def test_an_export_input_size_that_does_not_fit_the_model_is_one_line(run_dir, tmp_path, capsys, extra):
    if "onnx" in extra:
        pytest.importorskip("onnx")
    out = tmp_path / "m.out"
    err = _fails(capsys, ["export", str(run_dir), *extra, "--input-size", "1", "1", "32", "32", "-o", str(out)])
    assert "cannot run on input_size (1, 1, 32, 32)" in err and "3 channels" in err
    assert not out.exists()


def test_an_export_into_a_missing_folder_names_the_folder(run_dir, tmp_path, capsys):
    err = _fails(capsys, ["export", str(run_dir), "--format", "state_dict", "-o", str(tmp_path / "nodir" / "m.pt")])
    assert err.endswith(f"there is no folder {tmp_path / 'nodir'}")


def test_a_damaged_compact_model_says_why_without_torchs_advice(run_dir, tmp_path, capsys):
    for name, content in (("empty.pt", b""), ("junk.pt", bytes(range(256)))):
        (tmp_path / name).write_bytes(content)
        err = _fails(capsys, ["export", str(tmp_path / name), "--format", "state_dict", "-o", str(tmp_path / "o.pt")])
        assert f"cannot read compact model or checkpoint {tmp_path / name}: " in err and "weights_only" not in err
        assert ("empty or cut short" if name == "empty.pt" else "not a PyTorch file, or a damaged one") in err


def test_a_checkpoint_of_another_model_or_method_names_both(run_dir, capsys):
    config = run_dir / "config.yaml"
    text = config.read_text()
    config.write_text(text.replace("name: resnet20", "name: resnet32"))  # as if the run dir held another run
    err = _fails(capsys, ["train", str(run_dir), "--resume"])
    assert "holds a resnet20 trained with method 'dense', but this run builds a resnet32 with method 'dense'" in err
    config.write_text(text)
    err = _fails(capsys, ["train", str(run_dir), "--resume", "--set", "method.name=lrpet", "--set", "method.goal=0.5"])
    assert "holds a resnet20 trained with method 'dense', but this run builds a resnet20 with method 'lrpet'" in err
    # Same model name, other shapes: the weights do not fit, and the message says so in one line.
    err = _fails(capsys, ["train", str(run_dir), "--resume", "--set", "model.num_classes=7"])
    assert "does not fit this run's resnet20 with method 'dense'" in err and "size mismatch for fc.weight" in err


@pytest.mark.parametrize("method, message", [
    ("{name: lrpet, rank: {layer1.0.conv1: 999}}",
     "layer1.0.conv1: rank 999 is out of range for scheme 'channel' (weight (16, 16, 3, 3): valid ranks are 1..16)"),
    ("{name: svd_finetune, rank: {layer1.0.conv1: 999}, dense_fraction: 0.0}",
     "layer1.0.conv1: rank 999 is out of range for scheme 'channel'"),
    ("{name: elrt, rank: {layer1.0.conv1: [20, 4]}}", "r_in in 1..16, r_out in 1..16"),
    ("{name: lrpet, rank: {layer9.conv1: 4}}",
     "layer 'layer9.conv1' was given a rank but cannot be factorized: no such conv/linear layer in the model"),
    ("{name: trp, rank: 'fixed:0'}", "FixedRank: the rank must be a positive integer, got 0"),
    ("{name: lrpet, goal: abc}", "method 'lrpet': could not convert string to float: 'abc' (from goal='abc')"),
    ("{name: lrpet, goal: 0.5, rank: 'flops:0.4'}",
     "got goal=0.5, rank='flops:0.4' (to replace a recipe's goal by a rank: --set method.goal=null)"),
    ("{name: elrt, rank: 'flops:0.45,multiple:8,multiple:16'}", "multiple is given twice"),
])
def test_impossible_ranks(tmp_path, capsys, method, message):
    recipe = _recipe(tmp_path, TINY + f"method: {method}\n")
    assert message in _fails(capsys, ["train", recipe, "--out-dir", str(tmp_path / "run")])


@pytest.mark.parametrize("method, message", [
    ("{name: trp, skip: ['*']}", "TRP: no conv of the model is eligible under scheme 'channel'"),
    ("{name: lrpet, goal: 0.5, skip: ['*']}", "LRPET: CifarResNet has no conv that can be projected"),
    ("{name: elrt, skip: ['*']}", "ELRT: no layer of CifarResNet can be factorized"),
    ("{name: svd_finetune, skip: ['*']}", "SVDFinetune: no layer of CifarResNet can be factorized"),
])
def test_a_model_with_no_eligible_layer(tmp_path, capsys, method, message):
    recipe = _recipe(tmp_path, TINY + f"method: {method}\n")
    err = _fails(capsys, ["train", recipe, "--out-dir", str(tmp_path / "run")])
    assert message in err and "conv1: in the skip list" in err and "more layers" in err


def test_compress_with_nothing_to_factorize_says_so(run_dir, tmp_path, capsys):
    err = _fails(capsys, ["compress", str(run_dir), "--skip", "*", "-o", str(tmp_path / "c.pt")])
    assert "no layer was factorized, so there is nothing to compress (conv1: in the skip list" in err
    assert not (tmp_path / "c.pt").exists()
    # Eligible layers that are only not cheaper at the asked ranks: the file is written, with a note.
    assert cli.main(["compress", str(run_dir), "--rank", "energy:1.0", "-o", str(tmp_path / "full.pt")]) == 0
    assert "note: no layer was factorized: at these ranks none is cheaper than dense" in capsys.readouterr().out


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 8589934592 bytes. Error code 12 (Cannot allocate memory)"),
])
def test_out_of_memory_suggests_a_smaller_batch(tmp_path, capsys, monkeypatch, error):
    def step(self, images, labels):
        if self.step == 2:
            raise error
        self.step += 1

    monkeypatch.setattr(Trainer, "train_step", step)
    recipe = _recipe(tmp_path, TINY.replace("train: {", "train: {checkpoint_every: 1, "))
    err = _fails(capsys, ["train", recipe, "--out-dir", str(tmp_path / "run")], status=1)
    assert err.startswith("lrtrain: error: out of memory on cpu")
    assert "at step 2 (training) with data.batch_size=16: lower it, e.g. --set data.batch_size=8" in err
    assert err.endswith(f"the last checkpoint is {tmp_path / 'run' / 'checkpoints' / 'step_000000002.pt'}")
    with pytest.raises(OutOfMemory) as raised:  # --debug: the traceback, down to the original error
        cli.main(["train", recipe, "--out-dir", str(tmp_path / "other"), "--debug"])
    assert raised.value.__cause__ is error


class _FailsInEval(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))

    def forward(self, x):
        if not self.training and x.shape[0] > 1:  # evaluation batches, not the FLOPs count's single image
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return super().forward(x)


def test_out_of_memory_in_evaluation_names_the_eval_batch_size(tmp_path):
    cfg = resolve({"out_dir": str(tmp_path / "run"), "train": {"epochs": 1, "progress": False},
                   "data": {"name": "sample", "train_size": 32, "test_size": 16, "image_size": 8,
                            "num_classes": 4, "batch_size": 16}})
    trainer = Trainer(cfg, model=_FailsInEval())
    with pytest.raises(OutOfMemory, match=r"\(evaluation\) with data.eval_batch_size=1024: lower it, "
                                          r"e.g. --set data.eval_batch_size=512"):
        trainer.fit()
    assert trainer.model.training and not trainer._evaluating  # a caller that goes on finds it as before


def test_help_and_a_bad_recipe_answer_without_importing_torch(tmp_path):
    import subprocess
    import sys

    recipe = tmp_path / "bad.yaml"
    recipe.write_text("data: {nmae: cifar10}\n")
    code = ("import sys, contextlib, io\n"
            "from lrtrain import cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n"
            "        cli.main(['--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            f"status = cli.main(['train', {str(recipe)!r}])\n"
            "print(status, 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False"], done.stderr
    assert "unknown key 'data.nmae' (did you mean 'data.name'?)" in done.stderr


def test_a_warning_is_one_line_without_the_source_location(tmp_path, capsys):
    import warnings

    recipe = _recipe(tmp_path, TINY + "schedule: {name: step, milestones: [5]}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert cli.main(["train", recipe, "--out-dir", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "milestones" in line]
    assert lines == [f"lrtrain: warning: {recipe}: schedule.milestones [5] lie at or past train.epochs=1: the "
                     "learning rate is never lowered there (set schedule.milestones for the shorter run, or "
                     "schedule.name=cosine)"]
    assert "config.py" not in err and warnings.showwarning.__module__ == "warnings"  # put back after the run
    with warnings.catch_warnings(), pytest.MonkeyPatch.context() as env:  # torchrun's second process
        warnings.simplefilter("always")
        env.setenv("RANK", "1")
        assert cli.main(["train", recipe, "--out-dir", str(tmp_path / "run"), "--overwrite"]) == 0
    assert "milestones" not in capsys.readouterr().err  # rank 0 says it, once


def test_a_reader_that_stops_early_is_no_error(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    read, write = os.pipe()
    os.close(read)  # `lrtrain info ... | head -1` once head has exited: every write meets a closed pipe
    src = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run([sys.executable, "-m", "lrtrain", "info", "resnet20", "--rank", "ratio:0.5"],
                          stdout=write, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": src})
    os.close(write)
    assert done.stderr == "" and done.returncode == 141  # 128 + SIGPIPE, as the shell's tools end


def test_a_null_method_setting_is_named_where_the_method_cannot_take_it_and_dropped_for_another_method(
        tmp_path, capsys):
    from lrtrain import models
    from lrtrain.methods import create_method

    model = models.create("resnet20")
    assert create_method("trp", model, rank=None, period=None).period == 0  # None is TRP's "never project"
    with pytest.raises(ValueError, match=r"method 'trp': ramp=null, nuclear=null is not a value it takes "
                                         r"\(.*\); leave the key out for the default \(ramp: 0.0, nuclear: 0.0003\)"):
        create_method("trp", model, ramp=None, nuclear=None)
    recipe = _recipe(tmp_path, TINY + "method: {name: lrpet, goal: 0.5, period: 2}\n")
    assert cli.main(["train", recipe, "--out-dir", str(tmp_path / "run"), "--set", "method.name=dense",
                     "--set", "method.goal=null", "--set", "method.period=null"]) == 0  # switched, not refused
    assert "method 'dense'" not in capsys.readouterr().err


def test_a_recipe_switched_to_another_method_leaves_out_the_old_methods_settings(tmp_path, capsys):
    recipe = ROOT / "recipes" / "cifar10_resnet20_lrpet.yaml"  # goal, period, transfer, bn_rectify
    sets = ["--set", "method.name=dense", "--set", "train.epochs=1", "--set", "data.name=sample",
            "--set", "data.train_size=32", "--set", "data.test_size=16", "--set", "data.image_size=8",
            "--set", "data.batch_size=16", "--set", "schedule.name=constant", "--set", "train.progress=false"]
    assert cli.main(["train", str(recipe), "-o", str(tmp_path / "run"), *sets]) == 0
    err = capsys.readouterr().err
    assert f"lrtrain: warning: {recipe}: method.name is 'dense' instead of the recipe's 'lrpet': the recipe's " \
           "settings for lrpet (goal, period, transfer, bn_rectify) are left out; give dense's own with --set " \
           "method.KEY=VALUE" in err
    with pytest.warns(UserWarning, match="settings for lrpet"):
        assert load_recipe(recipe, ["method.name=dense"])["method"] == {"name": "dense"}
        cfg = load_recipe(recipe, ["method.name=trp", "method.period=5", "method.goal=null"])
    assert cfg["method"] == {"name": "trp", "period": 5, "goal": None}  # what --set gave stays
    from lrtrain import models
    from lrtrain.methods import create_method

    trp = load_recipe(ROOT / "recipes" / "cifar10_resnet20_trp_channel.yaml", ["method.period=null"])["method"]
    with pytest.raises(ValueError, match=r"period=None never projects; use subgradient='auto'"):
        create_method("trp", models.create("resnet20"), **{k: v for k, v in trp.items() if k != "name"})


def test_relative_paths_of_a_run_are_kept_absolute_so_it_resumes_and_scores_from_anywhere(tmp_path, capsys,
                                                                                          monkeypatch):
    from test_data import _two_class_folder

    _two_class_folder(tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path, TINY.replace("name: sample", "name: folder, dir: images, workers: 0")
                     .replace("train_size: 64, test_size: 32, ", "").replace(", num_classes: 4", "")
                     .replace("batch_size: 16", "batch_size: 2, eval_batch_size: 4"))
    assert cli.main(["train", recipe, "--out-dir", "run"]) == 0
    assert cli.main(["train", recipe, "--out-dir", "weighted", "--set", "model.weights=run"]) == 0  # a run dir
    from lrtrain.config import load_recipe

    assert load_recipe(str(tmp_path / "run"), [])["data"]["dir"] == str(tmp_path / "images")
    from lrtrain.train.trainer import absolute_paths

    (tmp_path / "orthogonal").mkdir()  # a folder named as ELRT's init choice: the setting is no path
    elrt = resolve({"method": {"name": "elrt", "init": "orthogonal"}, "model": {"weights": "images"}})
    assert absolute_paths(elrt)["method"]["init"] == "orthogonal"
    assert absolute_paths(elrt)["model"]["weights"] == str(tmp_path / "images")
    monkeypatch.chdir(tmp_path / "images")  # elsewhere
    capsys.readouterr()
    assert cli.main(["evaluate", str(tmp_path / "run")]) == 0
    assert cli.main(["train", str(tmp_path / "run"), "--resume", "--set", "train.epochs=2"]) == 0
    assert "error" not in capsys.readouterr().err


def test_an_output_file_that_is_a_folder_is_named(run_dir, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    err = _fails(capsys, ["export", str(run_dir), "--format", "state_dict", "-o", str(tmp_path / "out")])
    assert err == f"lrtrain: error: cannot write {tmp_path / 'out'}: it is a folder (give a file name in it)"


def test_train_takes_the_device_on_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = _fails(capsys, ["train", _recipe(tmp_path), "--out-dir", str(tmp_path / "run"), "--device", "cuda"])
    assert err == "lrtrain: error: device 'cuda': this machine has no CUDA device (use cpu or auto)"
    assert cli.main(["train", _recipe(tmp_path), "--out-dir", str(tmp_path / "run"), "--device", "cpu"]) == 0
    from lrtrain.config import load_recipe

    assert load_recipe(str(tmp_path / "run"), [])["train"]["device"] == "cpu"


def test_a_broken_pipe_that_is_not_the_output_is_an_error(monkeypatch, capsys):
    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    import dataclasses

    monkeypatch.setitem(cli.COMMANDS, "info", dataclasses.replace(cli.COMMANDS["info"], run=broken))
    assert cli.main(["info", "resnet20"]) == 2  # stdout here is pytest's capture, not a closed pipe
    assert "Broken pipe" in capsys.readouterr().err
    with pytest.raises(BrokenPipeError):
        cli.main(["--debug", "info", "resnet20"])


@pytest.mark.parametrize("classes", [0, 3])
def test_a_model_with_fewer_classes_than_the_data_is_one_line_before_training(tmp_path, capsys, classes):
    err = _fails(capsys, ["train", _recipe(tmp_path), "--out-dir", str(tmp_path / "run"),
                          "--set", f"model.num_classes={classes}"])
    assert err == (f"lrtrain: error: model.num_classes is {classes}, but the data has 4 classes (labels 0..3): "
                   "give at least 4, or leave it out for the data's")


def test_contradictory_or_impossible_run_flags_and_a_demo_over_another_run_are_refused(run_dir, tmp_path, capsys):
    before = sorted(p.name for p in run_dir.rglob("*"))
    err = _fails(capsys, ["demo", "--out-dir", str(run_dir)])
    assert err == f"lrtrain: error: {run_dir} holds a run that is not a demo: the demo replaces its folder, so " \
                  "give it another --out-dir"
    assert sorted(p.name for p in run_dir.rglob("*")) == before  # nothing of the run lost
    assert "give one" in _fails(capsys, ["train", str(run_dir), "--resume", "--overwrite"])
    assert "give a number of seconds, 0 or more" in _fails(capsys, ["train", str(run_dir), "--time-limit", "-5"])


@pytest.mark.parametrize("command", [["compress", "--rank", "ratio:0.5"], ["export", "--format", "state_dict"]])
def test_an_output_onto_a_runs_own_file_is_refused(run_dir, capsys, command):
    kept = (run_dir / "compact.pt").read_bytes()
    err = _fails(capsys, [command[0], str(run_dir), *command[1:], "-o", str(run_dir / "compact.pt")])
    assert err == f"lrtrain: error: {run_dir / 'compact.pt'} is a file of the run in {run_dir}: write the output " \
                  "elsewhere"
    assert (run_dir / "compact.pt").read_bytes() == kept
    checkpoint = sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1]
    held = checkpoint.read_bytes()
    err = _fails(capsys, [command[0], str(run_dir), *command[1:], "-o", str(checkpoint)])
    assert err == f"lrtrain: error: {checkpoint} is in the checkpoints folder of the run in {run_dir}: write the " \
                  "output elsewhere"
    err = _fails(capsys, [command[0], str(checkpoint), *command[1:], "-o", str(checkpoint)])
    assert err == f"lrtrain: error: {checkpoint} is the model read: write the output elsewhere"
    assert checkpoint.read_bytes() == held


def test_info_of_a_path_that_is_not_there_says_so_not_unknown_model(tmp_path, capsys):
    err = _fails(capsys, ["info", str(tmp_path / "runs" / "gone")])
    assert err == f"lrtrain: error: no such run directory, compact model or checkpoint: {tmp_path / 'runs' / 'gone'}"
    assert "unknown model" in _fails(capsys, ["info", "resnet21"])


def test_extending_a_cosine_run_warns_that_its_schedule_is_stretched(tmp_path, capsys):
    recipe = _recipe(tmp_path, TINY + "schedule: {name: cosine}\n")
    assert cli.main(["train", recipe, "--out-dir", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert cli.main(["train", str(tmp_path / "run"), "--resume", "--set", "train.epochs=2"]) == 0
    err = capsys.readouterr().err
    assert "lrtrain: warning: train.epochs changed from 1 to 2: the cosine schedule is spread over the new " \
           "length from here on" in err


def test_a_positional_taken_by_a_many_valued_option_is_named(capsys):
    with pytest.raises(SystemExit):
        cli.main(["info", "--skip", "fc", "resnet20"])
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == "lrtrain info: error: the following arguments are required: model (--skip takes every word " \
                  "that follows it: put the argument before --skip, or end its values with --)"
    with pytest.raises(SystemExit):  # nothing to explain where the option was not given
        cli.main(["report"])
    assert capsys.readouterr().err.splitlines()[-1].endswith("required: RUN_DIR")
    assert cli.main(["info", "--skip", "fc", "--", "resnet20"]) == 0
    assert "fc " in capsys.readouterr().out


def test_the_python_api_refuses_what_its_docstrings_rule_out(tmp_path):
    import numpy as np

    import lrtrain as lr
    from lrtrain import export
    from lrtrain.prediction import predict, read_images
    from lrtrain.schemes import whole_number

    assert whole_number(np.bool_(True)) is None and whole_number(torch.tensor(True)) is None
    assert whole_number(np.int64(3)) == 3 and lr.LowRankLinear(4, 4, 2.0).rank == 2  # as LowRankConv2d takes it
    with pytest.raises(ValueError, match="rank True is not an integer"):
        lr.LowRankLinear(4, 4, True)
    model = lr.models.create("resnet20", num_classes=3)
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    probs, labels = predict(model, images, None, top=20)
    assert probs.shape == labels.shape == (2, 3)  # min(top, classes)
    for kw in ({"top": 0}, {"batch_size": 0}):
        with pytest.raises(ValueError, match="predict needs top >= 1 and batch_size >= 1"):
            predict(model, images, None, **kw)
    with pytest.raises(ValueError, match=r"export to torchscript takes no option 'opset'"):
        export.export(model, tmp_path / "m.ts", "torchscript", (1, 3, 8, 8), opset=11)
    with pytest.raises(ValueError, match=r"resize \(8\) must be at least the crop size \(16\)"):
        read_images(tmp_path / "any.png", 16, resize=8)
    assert [d.name for d in lr.plan(model, rank="ratio:0.5", skip=None)][0] == "conv1"  # None: no skip list
