"""Recipes: defaults, overrides, validation messages, the shipped recipes."""

import warnings
from pathlib import Path

import pytest

from lrtrain.config import ConfigError, apply_override, defaults, dump, load_recipe, resolve

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_every_key_has_a_default_and_resolve_fills_them():
    cfg = resolve({"optim": {"lr": 0.05}})
    assert cfg["optim"]["lr"] == 0.05
    assert cfg["optim"]["momentum"] == defaults()["optim"]["momentum"] == 0.9
    assert cfg["method"] == {"name": "dense"}
    assert cfg["name"] == "run" and cfg["out_dir"] == str(Path("runs") / "run")


@pytest.mark.parametrize("name, model, wd", [("cifar10_resnet20_dense", "resnet20", 1e-4),
                                             ("cifar10_resnet56_dense", "resnet56", 1e-4)])
def test_shipped_recipes_hold_the_papers_baseline(name, model, wd):
    cfg = load_recipe(RECIPES / f"{name}.yaml")
    assert cfg["name"] == name and cfg["out_dir"] == str(Path("runs") / name)
    assert cfg["model"]["name"] == model and cfg["method"]["name"] == "dense"
    assert (cfg["optim"]["lr"], cfg["optim"]["momentum"], cfg["optim"]["weight_decay"]) == (0.1, 0.9, wd)
    assert cfg["data"]["batch_size"] == 128 and 160 <= cfg["train"]["epochs"] <= 200
    assert isinstance(cfg["optim"]["weight_decay"], float)


def test_overrides_are_parsed_as_yaml(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 0.1\nmethod:\n  name: dense\n")
    cfg = load_recipe(recipe, ["optim.nesterov=true", "schedule.milestones=[10, 20]", "optim.weight_decay=1e-4",
                               "train.epochs=3", "method.period=5", "data.dir=/some/where", "out_dir=elsewhere"])
    assert cfg["optim"]["nesterov"] is True
    assert cfg["schedule"]["milestones"] == [10, 20]
    assert cfg["optim"]["weight_decay"] == 1e-4  # YAML reads "1e-4" as a string; the float key accepts it
    assert cfg["train"]["epochs"] == 3
    assert cfg["method"] == {"name": "dense", "period": 5}  # method parameters pass through
    assert cfg["data"]["dir"] == "/some/where" and cfg["out_dir"] == "elsewhere"


@pytest.mark.parametrize("recipe, message", [
    ({"optim": {"lrr": 0.1}}, "recipe: unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
    ({"lr": 0.1}, "recipe: unknown key 'lr' (did you mean 'optim.lr'?)"),
    ({"trian": {}}, "recipe: unknown key 'trian' (did you mean 'train'?)"),
    ({"optim": {"lr": "fast"}}, "recipe: optim.lr must be a number, got 'fast'"),
    ({"train": {"epochs": 2.5}}, "recipe: train.epochs must be an integer, got 2.5"),
    ({"train": {"epochs": True}}, "recipe: train.epochs must be an integer, got True"),
    ({"train": {"amp": "maybe"}}, "recipe: train.amp must be true/false or auto, got 'maybe'"),
    ({"data": {"name": "mnist"}},
     "recipe: data.name must be one of cifar10, cifar100, folder, sample, got 'mnist'"),
    ({"data": 3}, "recipe: data must be a mapping, got 3"),
    ({"data": {"batch_size": 0}}, "recipe: data.batch_size must be >= 1, got 0"),
    ({"schedule": {"milestones": [120, 80]}}, "recipe: schedule.milestones must be increasing epoch numbers"),
    ({"schedule": {"milestones": [80, 80]}}, "recipe: schedule.milestones must be increasing epoch numbers"),
    ({"schedule": {"milestones": [-5, 80]}}, "recipe: schedule.milestones must be increasing epoch numbers (>= 0)"),
    ({"optim": {"lr": "nan"}}, "recipe: optim.lr must be a finite number, got nan"),
    ({"optim": {"lr": float("inf")}}, "recipe: optim.lr must be a finite number, got inf"),
    ({"optim": {"momentum": 3}}, "recipe: optim.momentum must be < 1, got 3"),
    ({"schedule": {"gamma": -1}}, "recipe: schedule.gamma must be > 0, got -1"),
    ({"train": {"label_smoothing": 2}}, "recipe: train.label_smoothing must be <= 1, got 2"),
    ({"optim": {"lr": 0.1}, "schedule": {"min_lr": 0.5}}, "recipe: schedule.min_lr (0.5) must not exceed optim.lr"),
])
def test_mistakes_give_one_line_messages(recipe, message):
    with pytest.raises(ConfigError) as err:
        resolve(recipe)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize("key, hint", [("train.epoch", "train.epochs"), ("train.lr", "optim.lr"),
                                       ("train.foo", None), ("train.name", None)])
def test_an_unknown_key_is_matched_within_its_section(key, hint):
    with pytest.raises(ConfigError) as err:
        resolve({key.split(".")[0]: {key.split(".")[1]: 1}})
    assert str(err.value) == f"recipe: unknown key {key!r}" + (f" (did you mean {hint!r}?)" if hint else "")


@pytest.mark.parametrize("assignment, message", [
    ("optim.lrr=0.1", "--set optim.lrr=0.1: unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
    ("optim.lr", "--set optim.lr: expected KEY=VALUE"),
    ("optim=3", "--set optim=3: optim is a section; set one of its keys"),
    ("optim.lr=abc", "--set optim.lr=abc: optim.lr must be a number, got 'abc'"),
    ("train.epochs=[1", "--set train.epochs=[1: cannot parse the value"),
])
def test_override_mistakes_name_the_override(assignment, message):
    with pytest.raises(ConfigError) as err:
        apply_override({}, assignment)
    assert str(err.value).startswith(message)


def test_a_section_with_every_key_commented_out_is_an_empty_section(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  # epochs: 3\noptim:\n  lr: 0.05\n")
    cfg = load_recipe(recipe, ["train.epochs=4"])
    assert cfg["train"]["epochs"] == 4 and cfg["optim"]["lr"] == 0.05
    recipe.write_text("train:\n  # epochs: 3\n")
    assert load_recipe(recipe)["train"] == resolve({})["train"]


def test_a_value_out_of_range_names_the_overrides_beside_the_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  batch_size: 8\n")
    with pytest.raises(ConfigError, match=r"r\.yaml \(with --set train\.epochs=2 data\.batch_size=0\): "
                                          r"data\.batch_size must be >= 1"):
        load_recipe(recipe, ["train.epochs=2", "data.batch_size=0"])
    recipe.write_text("data:\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: data\.batch_size must be >= 1"):
        load_recipe(recipe)


def test_one_override_given_as_a_string_is_one_override(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 0.1\n")
    assert load_recipe(recipe, "optim.lr=0.05")["optim"]["lr"] == 0.05


def test_recipe_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  momentun: 0.9\n")
    expected = r"bad\.yaml: unknown key 'optim\.momentun' \(did you mean 'optim\.momentum'\?\)"
    with pytest.raises(ConfigError, match=expected):
        load_recipe(bad)
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_recipe(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="a recipe must be a mapping"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="no recipe file"):
        load_recipe(tmp_path / "missing.yaml")


def test_a_run_directory_is_a_recipe(tmp_path):
    cfg = load_recipe(RECIPES / "cifar10_resnet20_dense.yaml", ["train.epochs=7"])
    dump(cfg, tmp_path / "config.yaml")
    assert load_recipe(tmp_path) == cfg
    with pytest.raises(ConfigError, match="has no config.yaml"):
        load_recipe(tmp_path / "..")


def test_a_step_schedule_whose_milestones_lie_past_the_run_is_named():
    shortened = {"train": {"epochs": 20}, "schedule": {"name": "step", "milestones": [10, 81, 122]}}
    with pytest.warns(UserWarning, match=r"schedule.milestones \[81, 122\] lie at or past train.epochs=20"):
        resolve(shortened)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve({"train": {"epochs": 20}, "schedule": {"name": "step", "milestones": [10, 15]}})
        resolve({"train": {"epochs": 20}, "schedule": {"name": "cosine", "milestones": [81]}})  # unused there


def test_a_runs_own_config_is_read_without_repeating_its_warnings(tmp_path):
    """A short run's late milestones are warned of when it starts; each resume of it said so again."""
    with pytest.warns(UserWarning, match="lie at or past train.epochs"):
        cfg = resolve({"train": {"epochs": 3}, "schedule": {"name": "step", "milestones": [81, 122]}})
    (tmp_path / "run").mkdir()
    dump(cfg, tmp_path / "run" / "config.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_recipe(tmp_path / "run")["schedule"]["milestones"] == [81, 122]
    with pytest.warns(UserWarning, match="lie at or past train.epochs=4"):  # changed on resume: said again
        load_recipe(tmp_path / "run", ["train.epochs=4"])
