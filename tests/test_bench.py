"""``lrtrain bench``: several recipes trained one after another, resumably, into one table and report."""

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from lrtrain import cli, models

TINY = {
    "model": {"name": "resnet20"},
    "data": {"name": "sample", "train_size": 64, "test_size": 32, "image_size": 8, "batch_size": 32,
             "eval_batch_size": 32},
    "schedule": {"name": "cosine"},
    "train": {"epochs": 2, "device": "cpu", "progress": False},
}


def _recipes(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, method in (("dense", {"name": "dense"}), ("half", {"name": "lrpet", "goal": 0.5})):
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**TINY, "method": method}))
        paths.append(str(path))
    return paths


def _summary(root: Path, name: str) -> dict:
    return json.loads((root / name / "summary.json").read_text())


def _table(root: Path) -> list[dict]:
    with open(root / "bench.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_bench_trains_each_recipe_resumably_into_one_table_and_report(tmp_path, capsys):
    recipes = _recipes(tmp_path / "recipes")
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert cli.main(["bench", *recipes, "-o", str(straight)]) == 0
    # 0 s: the first run trains one epoch and stops with a checkpoint; the second does not start
    assert cli.main(["bench", *recipes, "-o", str(cut), "--time-limit", "0"]) == 0
    out = capsys.readouterr().out
    assert "bench: dense stopped with a checkpoint; the same command resumes it" in out
    assert not (cut / "half").exists() and _table(cut) == []
    assert "Not finished yet: dense, half (the same command resumes them)." in (cut / "bench.md").read_text()
    assert cli.main(["bench", *recipes, "-o", str(cut)]) == 0
    assert "bench: half finished: top-1" in capsys.readouterr().out
    for name in ("dense", "half"):  # the resumed runs are the uninterrupted ones
        a, b = _summary(straight, name), _summary(cut, name)
        assert (a["final_acc"], a["final_loss"], a["compact"]) == (b["final_acc"], b["final_loss"], b["compact"])
    rows = {r["run"]: r for r in _table(cut)}
    assert list(rows) == ["dense", "half"] and rows["half"]["method"] == "half"  # rows named by their recipes
    half = _summary(cut, "half")
    assert float(rows["half"]["flops_speedup"]) == pytest.approx(half["dense"]["flops"] / half["compact"]["flops"])
    assert float(rows["half"]["top1_final"]) == half["final_acc"] and rows["half"]["cpu_speedup_b32"] == ""
    table = (cut / "bench.md").read_text()
    assert "| run | model |" in table and f"Command: `lrtrain bench {' '.join(recipes)} -o {cut}`." in table
    report = (cut / "report" / "README.md").read_text()
    assert "accuracy_vs_flops.png" in report and (cut / "report" / "half_ranks.png").is_file()
    # a finished bench trains nothing again; --speed times the compact models on this CPU
    mtime = (cut / "half" / "summary.json").stat().st_mtime_ns
    assert cli.main(["bench", *recipes, "-o", str(cut), "--report-only", "--speed", "--threads", "1"]) == 0
    assert (cut / "half" / "summary.json").stat().st_mtime_ns == mtime
    timed = {r["run"]: r for r in _table(cut)}
    assert float(timed["dense"]["cpu_speedup_b32"]) == 1.0 and float(timed["half"]["cpu_speedup_b32"]) > 0


def test_bench_sets_every_recipe_and_refuses_two_recipes_of_one_name(tmp_path, capsys, monkeypatch):
    recipes = _recipes(tmp_path / "a")
    assert cli.main(["bench", *recipes, "-o", str(tmp_path / "out"), "--set", "train.epochs=1"]) == 0
    assert [_summary(tmp_path / "out", n)["epochs"] for n in ("dense", "half")] == [1, 1]
    assert "--set train.epochs=1" in (tmp_path / "out" / "bench.md").read_text()  # the command that made it
    capsys.readouterr()
    # the quick try's finished runs are not passed off as the longer runs asked for now
    assert cli.main(["bench", *recipes, "-o", str(tmp_path / "out"), "--set", "train.epochs=2"]) == 2
    assert (f"{tmp_path / 'out' / 'dense'} holds a finished run trained with train.epochs=1 (asked 2): give "
            "another -o, or delete") in capsys.readouterr().err
    # where and how it ran does not matter, nor a file named relative to here (the run keeps it absolute)
    assert cli.main(["bench", *recipes, "-o", str(tmp_path / "out"), "--set", "train.epochs=1", "--device", "cpu",
                     "--set", "train.keep_checkpoints=3", "--report-only"]) == 0
    torch.save(models.create("resnet20").state_dict(), tmp_path / "w.pt")
    sets = ["--set", "train.epochs=1", "--set", "model.weights=w.pt"]
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", recipes[0], "-o", "rel", *sets]) == 0
    assert cli.main(["bench", recipes[0], "-o", "rel", *sets, "--report-only"]) == 0
    again = _recipes(tmp_path / "b")[0]
    assert cli.main(["bench", recipes[0], again, "-o", str(tmp_path / "twice")]) == 2
    err = capsys.readouterr().err
    assert f"{recipes[0]} and {again} would share the run folder 'dense'" in err
    assert not (tmp_path / "twice").exists()  # refused before anything is written


def test_eval_is_evaluate():
    parser = cli.build_parser()
    alias, full = (vars(parser.parse_args([name, "run", "--latency", "--device", "cpu"])) for name in ("eval", "evaluate"))
    assert alias.pop("command") == "eval" and full.pop("command") == "evaluate" and alias == full
    assert cli.COMMANDS[cli._CANONICAL["eval"]] is cli.COMMANDS["evaluate"]


def test_a_signal_stops_the_bench_with_the_shells_status_and_bad_limits_are_refused(tmp_path, monkeypatch, capsys):
    from lrtrain.train import Trainer

    recipes = _recipes(tmp_path / "r")
    calls = []

    def interrupted(self, **kw):  # the trainer stopped by Ctrl-C, with its checkpoint
        calls.append(self.cfg["name"])
        return {"finished": False, "signal": "SIGINT"}

    monkeypatch.setattr(Trainer, "fit", interrupted)
    assert cli.main(["bench", *recipes, "-o", str(tmp_path / "out")]) == 130
    assert calls == ["dense"]  # the next recipe is not started
    assert "bench: dense stopped with a checkpoint" in capsys.readouterr().out
    assert cli.main(["bench", *recipes, "--time-limit", "-5"]) == 2
    assert "--time-limit is -5 s" in capsys.readouterr().err


def _recipe(folder: Path, name: str, **changes) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    recipe = {**TINY, "method": {"name": "dense"}, "train": {**TINY["train"], "epochs": 1}}
    for section, values in changes.items():
        recipe[section] = {**recipe.get(section, {}), **values}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_the_table_keeps_the_runs_of_earlier_calls_their_commands_and_timings(tmp_path, capsys):
    out = tmp_path / "out"
    first = _recipe(tmp_path / "r", "first")
    second = _recipe(tmp_path / "r", "second", method={"name": "lrpet", "goal": 0.5})
    assert cli.main(["bench", first, "-o", str(out), "--speed", "--threads", "1"]) == 0
    timed = _table(out)[0]
    assert cli.main(["bench", second, "-o", str(out), "--set", "data.test_size=32"]) == 0
    rows = {r["run"]: r for r in _table(out)}
    assert list(rows) == ["second", "first"]  # this call's recipes first, then the folder's other finished runs
    # the earlier row keeps the command that trained it and the speedups timed then; the new one is untimed
    assert rows["first"]["command"] == timed["command"] == f"lrtrain bench {first} -o {out}"
    assert (rows["first"]["cpu_speedup_b32"], rows["first"]["cpu_timing"]) == (timed["cpu_speedup_b32"],
                                                                             timed["cpu_timing"]) != ("", "")
    assert rows["second"]["command"] == f"lrtrain bench {second} -o {out} --set data.test_size=32"
    assert rows["second"]["cpu_speedup_b32"] == ""
    md = (out / "bench.md").read_text()
    assert md.startswith("# lrtrain bench: 2 run(s)") and timed["cpu_timing"] in md
    report = (out / "report" / "README.md").read_text()
    assert "## Run second" in report and "## Run first" in report


def test_a_failing_recipe_is_said_and_the_others_train(tmp_path, capsys):
    out = tmp_path / "out"
    recipes = [_recipe(tmp_path / "r", "a"),
               _recipe(tmp_path / "r", "broken", data={"name": "folder", "dir": str(tmp_path / "nowhere")}),
               _recipe(tmp_path / "r", "c")]
    assert cli.main(["bench", *recipes, "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert "bench: broken failed: image folder not found" in captured.out
    assert captured.err.startswith("lrtrain: error: broken failed: image folder not found")
    assert [r["run"] for r in _table(out)] == ["a", "c"]
    assert "Not finished yet: broken" in (out / "bench.md").read_text()


def test_a_started_run_is_not_resumed_with_other_settings(tmp_path, capsys):
    recipe = _recipe(tmp_path / "r", "a", train={"epochs": 2})
    out = tmp_path / "out"
    assert cli.main(["bench", recipe, "-o", str(out), "--time-limit", "0", "--set", "optim.lr=0.5"]) == 0
    capsys.readouterr()
    assert cli.main(["bench", recipe, "-o", str(out)]) == 2
    assert (f"lrtrain: error: {out / 'a'} holds a started run trained with optim.lr=0.5 (asked 0.1): give another "
            f"-o, or delete {out / 'a'} to train it again") in capsys.readouterr().err
    assert cli.main(["bench", recipe, "-o", str(out), "--set", "optim.lr=0.5"]) == 0  # its own settings resume it
    assert _summary(out, "a")["epochs"] == 2


def test_bench_refuses_what_would_fail_late_before_training(tmp_path, capsys):
    out = tmp_path / "out"
    recipe = _recipe(tmp_path / "r", "a")
    assert cli.main(["bench", recipe, "-o", str(out), "--paper-points", str(tmp_path / "nope.yaml")]) == 2
    assert "paper points" in capsys.readouterr().err and not out.exists()
    assert cli.main(["bench", recipe, "-o", str(out), "--speed", "--threads", "0"]) == 2
    assert "--threads is 0: give 1 or more" in capsys.readouterr().err
    assert cli.main(["bench", _recipe(tmp_path / "r", "report"), "-o", str(out)]) == 2
    assert "a recipe named 'report' would train in" in capsys.readouterr().err and not out.exists()


def test_a_damaged_summary_is_named(tmp_path, capsys):
    out = tmp_path / "out"
    recipe = _recipe(tmp_path / "r", "a")
    assert cli.main(["bench", recipe, "-o", str(out)]) == 0
    for text, why in (('{"final_acc": 1', "not JSON"), ("{}", "without method, epochs, final_acc")):
        (out / "a" / "summary.json").write_text(text)
        for argv in (["bench", recipe, "-o", str(out)], ["report", str(out / "a"), "-o", str(tmp_path / "rep")]):
            assert cli.main(argv) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"lrtrain: error: {out / 'a' / 'summary.json'}: damaged summary.json, {why}"), err


def test_speedups_are_timed_at_the_input_size_the_run_trained_at(tmp_path, monkeypatch):
    from lrtrain import benchmark

    out = tmp_path / "out"
    assert cli.main(["bench", _recipe(tmp_path / "r", "half", method={"name": "lrpet", "goal": 0.5}),
                     "-o", str(out)]) == 0
    sizes = []
    monkeypatch.setattr(benchmark, "latency_ratio", lambda dense, compact, size, *a, **k: sizes.append(size) or 1.5)
    assert cli.main(["bench", str(tmp_path / "r" / "half.yaml"), "-o", str(out), "--report-only", "--speed"]) == 0
    assert sizes == [(32, 3, 8, 8)] * 2  # TINY's 8×8 images, not CIFAR's 32×32
    assert float(_table(out)[0]["cpu_speedup_b32"]) == 1.5


@pytest.mark.filterwarnings("default:.*schedule.milestones:UserWarning")  # pyproject ignores it
def test_a_recipes_warning_is_said_once_and_a_new_run_starts_without_a_note(tmp_path, capsys):
    """bench read each recipe, then resolved it again for its run and warned twice; every new run said
    "no checkpoint ...: starting from scratch", which a new folder goes without saying."""
    short = _recipe(tmp_path / "r", "short", schedule={"name": "step", "milestones": [81, 122]})
    assert cli.main(["bench", short, "-o", str(tmp_path / "out")]) == 0
    said = capsys.readouterr()
    assert said.err.count("lie at or past train.epochs=1") == 1 and "starting from scratch" not in said.out
