"""Scoring a model on a test split: the function, and ``lrtrain evaluate`` on runs, files and checkpoints."""

import doctest
import csv
import json
import re
import textwrap
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from lrtrain import cli
from lrtrain.evaluation import evaluate, predicted_classes, resolve_source
from lrtrain.train.checkpoint import list_checkpoints

RECIPE = """
model: {name: resnet32, num_classes: 9}
data: {name: sample, train_size: 64, test_size: 48, image_size: 8, num_classes: 7, batch_size: 16,
       eval_batch_size: 20}
method: {name: lrpet, goal: 0.5}
train: {epochs: 1, progress: false}
"""


def test_evaluate_sums_loss_top1_and_top5_over_batches_in_eval_mode():
    logits = torch.randn(30, 7, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 7, (30,), generator=torch.Generator().manual_seed(1))
    model = nn.Sequential(nn.Dropout(0.5)).train()  # the logits pass through only in eval mode
    result = evaluate(model, [(logits[:16], labels[:16]), (logits[16:], labels[16:])])
    ranked = logits.argsort(1, descending=True)
    assert result["images"] == 30
    assert result["test_acc"] == pytest.approx(100 * (ranked[:, 0] == labels).float().mean().item())
    assert result["top5_acc"] == pytest.approx(100 * (ranked[:, :5] == labels[:, None]).any(1).float().mean().item())
    assert result["test_loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert model.training
    with pytest.raises(ValueError, match="no image"):
        evaluate(model, [])


def test_a_model_is_scored_on_data_with_at_most_as_many_classes_as_it_predicts():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    data = SimpleNamespace(input_size=(1, 3, 2, 2), num_classes=2, description="D")
    assert predicted_classes(model, data, "M") == 3  # e.g. a head kept from weights with more classes
    with pytest.raises(ValueError, match="M predicts 3 classes; D has 4"):
        predicted_classes(model, SimpleNamespace(**{**vars(data), "num_classes": 4}), "M")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny LRPET run on generated data (7 classes, the model built for 9, as one started from
    weights with more classes would be): compact.pt, checkpoints, config.yaml."""
    folder = tmp_path_factory.mktemp("evaluate")
    (folder / "recipe.yaml").write_text(textwrap.dedent(RECIPE))
    assert cli.main(["train", str(folder / "recipe.yaml"), "--out-dir", str(folder / "run")]) == 0
    return folder / "run"


def _lines(capsys, argv):
    assert cli.main(argv) == 0
    return capsys.readouterr().out.strip().splitlines()


def test_a_runs_compact_model_scores_what_the_trainer_reported(run, capsys):
    final = json.loads((run / "summary.json").read_text())["final_acc"]
    for source in (run, run / "compact.pt"):  # the file alone finds its run's data beside it
        scored, sizes = _lines(capsys, ["evaluate", str(source)])
        assert scored.startswith(f"{run / 'compact.pt'} (compact model) on generated sample set")
        assert f"top-1 {final:.2f}%, top-5 " in scored and "(48 images, cpu)" in scored
        assert "x fewer than a dense resnet32" in sizes
    *_, batch1, batch32 = _lines(capsys, ["evaluate", str(run), "--latency"])
    for line, batch in ((batch1, 1), (batch32, 32)):
        assert re.fullmatch(rf"forward pass on this CPU \(\d+ threads\), batch {batch}: \d+\.\d\dx the dense "
                            r"model's speed", line) and float(line.split(": ")[1].split("x")[0]) > 0


def test_a_checkpoint_scores_as_the_model_trained_so_far(run, capsys):
    newest = list_checkpoints(run / "checkpoints")[-1]
    scored, sizes = _lines(capsys, ["evaluate", str(newest)])
    assert scored.startswith(f"{newest} (checkpoint: the model as trained so far) on generated sample set")
    with open(run / "metrics.csv") as f:  # the epoch's own evaluation, of the model it checkpointed
        assert f"top-1 {float(list(csv.DictReader(f))[-1]['test_acc']):.2f}%" in scored
    assert sizes.endswith("M params: a dense resnet32's")  # the checkpoint's own model, with its 9 outputs


def test_a_data_dir_recorded_on_another_machine_falls_back_with_a_note(run, tmp_path, capsys):
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "compact.pt").write_bytes((run / "compact.pt").read_bytes())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["dir"] = "/nowhere/cifar"
    (moved / "config.yaml").write_text(yaml.safe_dump(cfg))
    lines = _lines(capsys, ["evaluate", str(moved)])
    assert lines[0] == "note: the run's data.dir /nowhere/cifar is not on this machine: looking elsewhere (give --data-dir)"


def test_another_data_set_takes_none_of_the_runs_data_settings(run, tmp_path, capsys):
    model, cfg, *_ = resolve_source(run, ["data.name=cifar100", "data.test_size=20"])
    assert cfg["data"]["test_size"] == 20 and cfg["data"]["image_size"] is None  # the run's 8 is not carried over
    for sets in (["data.test_size=20"], ["data.name=sample", "data.test_size=20"]):  # its own data set, named or not
        _, same, *_ = resolve_source(run, sets)
        assert same["data"]["image_size"] == 8 and same["data"]["num_classes"] == 7 and same["data"]["test_size"] == 20


def test_a_checkpoint_of_a_run_that_recalibrated_batchnorm_says_its_score_may_differ(tmp_path, capsys):
    (tmp_path / "recipe.yaml").write_text(textwrap.dedent(RECIPE) + "\n")
    assert cli.main(["train", str(tmp_path / "recipe.yaml"), "--out-dir", str(tmp_path / "run"),
                     "--set", "train.bn_recalibrate=1"]) == 0
    capsys.readouterr()
    newest = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    scored, *rest = _lines(capsys, ["evaluate", str(newest)])
    acc = float(list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))[-1]["test_acc"])
    assert scored.startswith(f"{newest} (checkpoint: the model as trained so far) on ")  # the caveat apart:
    assert rest[0] == (f"note: the checkpoint's BatchNorm statistics are scored as saved, while the trainer's "
                       f"score of epoch 1 ({acc:.2f}%) re-estimated them after a projection (train.bn_recalibrate): "
                       "the two may differ")


@pytest.mark.parametrize("argv, message", [
    (["--set", "optim.lr=0.1"], "--set optim.lr=0.1: evaluate takes data.* keys only"),
    (["--set", "data.num_classes=11"], "(compact model) predicts 9 classes; generated sample set (8×8, 11 classes)"),
])
def test_data_the_model_cannot_be_scored_on_is_one_line(run, capsys, argv, message):
    assert cli.main(["evaluate", str(run), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lrtrain: error: ") and message in err and err.count("\n") == 1


def test_a_missing_source_is_named(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path / "nothing")]) == 2
    assert f"no such run directory, compact model or checkpoint: {tmp_path / 'nothing'}" in capsys.readouterr().err


def test_the_module_example_runs():
    from lrtrain import evaluation

    assert doctest.testmod(evaluation).failed == 0


def test_a_folder_runs_compressed_model_keeps_its_class_names_and_scores_on_val_alone(tmp_path, capsys):
    from test_data import _two_class_folder

    from lrtrain.export import load_with_arch

    _two_class_folder(tmp_path / "images")
    recipe = tmp_path / "folder.yaml"
    recipe.write_text(textwrap.dedent(f"""
        model: {{name: resnet20}}
        data: {{name: folder, dir: {tmp_path / 'images'}, image_size: 8, batch_size: 2, eval_batch_size: 4,
               workers: 0}}
        train: {{epochs: 1, progress: false}}
        """))
    assert cli.main(["train", str(recipe), "--out-dir", str(tmp_path / "run")]) == 0
    assert cli.main(["compress", str(tmp_path / "run"), "--rank", "ratio:0.5", "-o", str(tmp_path / "c.pt")]) == 0
    assert load_with_arch(tmp_path / "c.pt")[1]["classes"] == ["ant", "bee"]
    newest = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]  # a checkpoint keeps them as well
    assert resolve_source(newest, [])[2]["classes"] == ["ant", "bee"]
    capsys.readouterr()
    (tmp_path / "images" / "train").rename(tmp_path / "images" / "gone")  # scoring needs val/ only
    scored, _ = _lines(capsys, ["evaluate", str(tmp_path / "c.pt"), "--set", "data.name=folder",
                                "--set", f"data.dir={tmp_path / 'images'}", "--set", "data.image_size=8"])
    assert "on image folder" in scored and "(6 val)" in scored and "top-5" not in scored  # 2 classes


def test_a_compact_model_is_scored_with_the_input_normalization_it_was_trained_with(tmp_path, capsys):
    """CIFAR's normalization comes from the training images: a run on 16 of them, scored with all 30 of the
    data set's (the default away from its run), still sees its own statistics, so its score is the run's."""
    from test_data import _write_fake_cifar

    _write_fake_cifar(tmp_path / "data")
    (tmp_path / "recipe.yaml").write_text(textwrap.dedent("""
        model: {name: resnet20}
        data: {name: cifar10, train_size: 16, batch_size: 8, eval_batch_size: 10}
        method: {name: dense}
        train: {epochs: 1, progress: false}
        """))
    assert cli.main(["train", str(tmp_path / "recipe.yaml"), "--out-dir", str(tmp_path / "run"),
                     "--set", f"data.dir={tmp_path / 'data'}"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    alone = tmp_path / "alone.pt"  # no config.yaml beside it: the data set's defaults, all 30 training images
    alone.write_bytes((tmp_path / "run" / "compact.pt").read_bytes())
    capsys.readouterr()
    scored, _ = _lines(capsys, ["evaluate", str(alone), "--data-dir", str(tmp_path / "data")])
    assert f"loss {summary['final_loss']:.4f} (6 images" in scored
    blob = torch.load(alone, weights_only=True)
    del blob["arch"]["normalize"], blob["arch"]["trained_on"]  # as written by an older lrtrain: the data set's
    torch.save(blob, alone)                                     # defaults, the 30 images' statistics
    note, scored, _ = _lines(capsys, ["evaluate", str(alone), "--data-dir", str(tmp_path / "data")])
    assert note.startswith(f"note: {alone} (compact model) records neither its data set nor its input normalization")
    assert f"loss {summary['final_loss']:.4f} (6 images" not in scored


def test_a_compact_model_away_from_its_run_is_scored_on_the_data_it_was_trained_on(tmp_path, capsys):
    """Its file records its data settings: a copy elsewhere is scored as in its run, not on CIFAR-10."""
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    assert cli.main(["train", str(tmp_path / "recipe.yaml"), "--out-dir", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    alone = tmp_path / "elsewhere" / "model.pt"
    alone.parent.mkdir()
    alone.write_bytes((tmp_path / "run" / "compact.pt").read_bytes())
    capsys.readouterr()
    assert cli.main(["evaluate", str(alone)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"{alone} (compact model) on ") and "sample" in first
    assert f"loss {summary['final_loss']:.4f} (48 images" in first


def test_a_resumed_run_keeps_normalizing_as_its_checkpoints_model_was_trained(tmp_path, capsys):
    """Resuming with other data settings (CIFAR's statistics come from the training images used) goes on
    feeding the model the inputs it was trained on, and says so."""
    from test_data import _write_fake_cifar

    from lrtrain.config import resolve
    from lrtrain.train import Trainer

    _write_fake_cifar(tmp_path / "data")
    recipe = {"out_dir": str(tmp_path / "run"), "model": {"name": "resnet20"},
              "data": {"name": "cifar10", "dir": str(tmp_path / "data"), "train_size": 16, "batch_size": 8},
              "train": {"epochs": 2, "progress": False}}
    first = Trainer(resolve(recipe))
    first.fit(until_step=2)
    trained_with = first.data.normalize
    recipe["data"]["train_size"] = 24
    again = Trainer(resolve(recipe))
    assert again.data.normalize != trained_with
    capsys.readouterr()
    again.fit(resume=True)
    assert "note: the images are normalized as" in capsys.readouterr().out
    assert again.data.normalize == trained_with
    assert torch.load(tmp_path / "run" / "compact.pt", weights_only=True)["arch"]["normalize"] == trained_with
    x, _ = next(again.data.test.batches())
    images = again.data.test.images[: len(x)].float()
    mean, std = (torch.tensor(trained_with[k]).view(1, 3, 1, 1) * 255 for k in ("mean", "std"))
    torch.testing.assert_close(x, (images - mean) / std)


def test_a_half_precision_compact_model_is_scored_in_its_dtype(run, tmp_path, capsys):
    import lrtrain as lr
    from lrtrain.export import load_with_arch

    model, arch = load_with_arch(run / "compact.pt")
    extra = {k: v for k, v in arch.items() if k not in ("model", "num_classes", "layers")}
    (tmp_path / "half").mkdir()
    lr.save(model.to(torch.bfloat16), tmp_path / "half" / "compact.pt", arch["model"], arch["num_classes"], **extra)
    (tmp_path / "half" / "config.yaml").write_bytes((run / "config.yaml").read_bytes())
    capsys.readouterr()
    scored, _ = _lines(capsys, ["evaluate", str(tmp_path / "half")])
    top1 = float(scored.split("top-1 ")[1].split("%")[0])
    final = json.loads((run / "summary.json").read_text())["final_acc"]
    assert abs(top1 - final) <= 100 * 3 / 48  # bf16 round-off moves at most a few of the 48 images


def test_shown_batches_are_the_loaders_with_a_bar_of_its_length_on_a_terminal_only(monkeypatch):
    import io

    from lrtrain.evaluation import shown_batches

    class Loader:
        def __len__(self):
            return 3

        def batches(self):
            return ((torch.full((2, 3, 4, 4), float(i)), torch.tensor([i, i])) for i in range(3))

    terminal = io.StringIO()
    terminal.isatty = lambda: True
    monkeypatch.setattr("sys.stderr", terminal)
    bar = shown_batches(Loader(), "evaluate")
    assert bar.total == 3 and not bar.disable
    assert [int(labels[0]) for _, labels in bar] == [0, 1, 2]
    assert "evaluate:   0%| " in terminal.getvalue() and "0/3" in terminal.getvalue()  # cleared after: leave=False
    assert shown_batches(Loader(), show=False).disable
    log = io.StringIO()  # a batch job's log: no bar
    monkeypatch.setattr("sys.stderr", log)
    assert shown_batches(Loader()).disable and [int(y[0]) for _, y in shown_batches(Loader())] == [0, 1, 2]
