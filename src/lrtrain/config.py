"""Recipes: YAML files of training settings, checked against a schema of known keys.

A recipe is a nested mapping; every key has a default (`defaults()`), so a recipe states only what it
changes. `load_recipe` reads one, applies ``--set a.b=value`` overrides (values parsed as YAML, so
``--set optim.nesterov=true`` gives a bool and ``--set schedule.milestones=[80,120]`` a list), fills in
the defaults and checks every key and type. Mistakes raise `ConfigError` with a one-line message that
names the key, the value and, for a misspelt key, the closest valid one::

    >>> resolve({"optim": {"lrr": 0.1}})
    Traceback (most recent call last):
    ...
    lrtrain.config.ConfigError: recipe: unknown key 'optim.lrr' (did you mean 'optim.lr'?)

The ``method`` section is free-form apart from its ``name``: its other keys are the method's own
parameters, checked against the method's constructor when the method is created.
"""

from __future__ import annotations

import copy
import difflib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

CONFIG_FILE = "config.yaml"


class ConfigError(ValueError):
    """A recipe or an override is invalid; the message is one line meant for the user."""


@dataclass(frozen=True)
class Field:
    """One recipe key: its default, accepted types, and optionally the accepted values."""

    default: Any
    types: tuple[type, ...]
    help: str
    choices: tuple | None = None
    nullable: bool = False
    auto: bool = False  # also accepts the string "auto": decided from the device at run time


def _f(default, types, help, **kw) -> Field:
    return Field(default, types if isinstance(types, tuple) else (types,), help, **kw)


_NUM = (int, float)

SCHEMA: dict[str, Any] = {
    "name": _f(None, str, "run name; default: the recipe's file name", nullable=True),
    "out_dir": _f(None, str, "run directory; default: runs/<name>", nullable=True),
    "seed": _f(0, int, "seed of weight initialization, data order and augmentation"),
    "model": {
        "name": _f("resnet20", str, "a name from lrtrain.models.list_models()"),
        "num_classes": _f(None, int, "default: the data set's number of classes", nullable=True),
        "weights": _f(None, str, "trained weights to start from (a state_dict file such as torchvision's "
                      "resnet50 .pth, a lrtrain checkpoint or a dense compact.pt), loaded before the method "
                      "is built", nullable=True),
    },
    "data": {
        "name": _f("cifar10", str, "data set", choices=("cifar10", "cifar100", "folder", "sample")),
        "dir": _f(None, str, "where to look for it; default: $LRTRAIN_DATA, then ../shared/data",
                  nullable=True),
        "batch_size": _f(128, int, "global batch size (split across processes when distributed)"),
        "eval_batch_size": _f(1024, int, "batch size of evaluation (large: fewer launches)"),
        "augment": _f(True, bool, "random crop with padding + horizontal flip (folder: resized crop)"),
        "padding": _f(4, int, "padding of the random crop (cifar, sample)"),
        "drop_last": _f(True, bool, "drop the last incomplete training batch (constant shapes)"),
        "train_size": _f(None, int, "use only N training images (cifar: the first N; folder: N fixed random "
                         "ones; sample: how many to make)", nullable=True),
        "test_size": _f(None, int, "use only N test images (as train_size)", nullable=True),
        "image_size": _f(None, int, "folder: crop size (224); sample: image side (32)", nullable=True),
        "num_classes": _f(10, int, "sample: number of classes to generate"),
        "workers": _f(8, int, "folder: DataLoader worker processes (at most the CPUs this process may use)"),
    },
    "optim": {
        "lr": _f(0.1, _NUM, "peak learning rate"),
        "momentum": _f(0.9, _NUM, "SGD momentum"),
        "nesterov": _f(False, bool, "Nesterov momentum"),
        "weight_decay": _f(1e-4, _NUM, "L2 weight decay"),
        "no_decay_norm_bias": _f(False, bool, "no weight decay on 1-D parameters (norm scales, biases)"),
    },
    "schedule": {
        "name": _f("step", str, "learning-rate schedule", choices=("step", "cosine", "constant")),
        "milestones": _f([80, 120], list, "step: epochs at which the lr is multiplied by gamma"),
        "gamma": _f(0.1, _NUM, "step: the factor"),
        "warmup_epochs": _f(0.0, _NUM, "linear warm-up from lr/steps to lr over this many epochs"),
        "min_lr": _f(0.0, _NUM, "cosine: the final learning rate"),
    },
    "train": {
        "epochs": _f(160, int, "training epochs"),
        "device": _f("auto", str, "auto (cuda when available), cpu, cuda, cuda:N"),
        "amp": _f("auto", bool, "bf16 autocast (auto: on for cuda)", auto=True),
        "channels_last": _f("auto", bool, "channels-last memory format (auto: on for cuda and the CPU)", auto=True),
        "compile": _f("auto", bool, "torch.compile the model (auto: on for cuda)", auto=True),
        "compile_mode": _f("auto", str, "torch.compile mode (auto: reduce-overhead, i.e. CUDA graphs, in a "
                           "single-process CUDA run, 2-3x faster a CIFAR step; default elsewhere)",
                           choices=("auto", "default", "reduce-overhead", "max-autotune",
                                    "max-autotune-no-cudagraphs")),
        "label_smoothing": _f(0.0, _NUM, "label smoothing of the cross-entropy loss"),
        "eval_every": _f(1, int, "evaluate on the test set every N epochs (and after the last)"),
        "checkpoint_every": _f(0, int, "also checkpoint every N steps (0: only at epoch ends)"),
        "keep_checkpoints": _f(2, int, "how many of the latest checkpoints to keep"),
        "bn_recalibrate": _f(0, int, "re-estimate BatchNorm statistics on this many training batches before "
                             "the compact model's final evaluation, and on a copy of the model before an "
                             "epoch-end evaluation that follows a projection (0: off)"),
        "progress": _f(True, bool, "tqdm progress bar per epoch"),
    },
    "method": {
        "name": _f("dense", str, "a registered method (lrtrain.methods.list_methods()); "
                   "other keys are its parameters"),
    },
}

_FREE_SECTIONS = {"method"}  # sections whose keys beyond the schema's are passed on as parameters


def defaults() -> dict[str, Any]:
    """A recipe with every key at its default."""

    def walk(node):
        return {k: walk(v) for k, v in node.items()} if isinstance(node, dict) else copy.deepcopy(node.default)

    return walk(SCHEMA)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"section.key": value}``."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The ``section.key`` names whose values differ between two configs (one missing from either too)."""
    a, b = flatten(a), flatten(b)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _keys(node: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        out.append(prefix + k)
        if isinstance(v, dict):
            out.extend(_keys(v, prefix + k + "."))
    return out


def _unknown(path: str, source: str) -> ConfigError:
    known = _keys(SCHEMA)
    parent, _, leaf = path.rpartition(".")
    # A right key in the wrong section ("lr" at the top) is matched by its last part where one key ends so
    # ("train.name" could be model.name, data.name...); a key of a known section only by the keys of that
    # section (the shared "train." made "train.foo" look like "train.epochs").
    close = [k for k in known if k.endswith("." + leaf)]
    close = close if len(close) == 1 else []
    if not close and parent in known:
        siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent]
        close = [f"{parent}.{k}" for k in difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)]
    elif not close:
        close = difflib.get_close_matches(path, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{source}: unknown key {path!r}{hint}")


def _type_name(f: Field) -> str:
    if f.types == _NUM:
        text = "a number"
    else:
        names = {bool: "true/false", int: "an integer", str: "a string", list: "a list"}
        text = " or ".join(names[t] for t in f.types)
    return text + (" or auto" if f.auto else "") + (" or null" if f.nullable else "")


def _check_value(path: str, f: Field, value: Any, source: str) -> Any:
    if value is None and f.nullable:
        return None
    if f.auto and value == "auto":
        return value
    if float in f.types and isinstance(value, str):
        # YAML 1.1 reads "1e-4" (no dot) as a string; accept it as the number it obviously is.
        try:
            value = float(value)
        except ValueError:
            pass
    ok = isinstance(value, f.types) and not (isinstance(value, bool) and bool not in f.types)
    if not ok:
        raise ConfigError(f"{source}: {path} must be {_type_name(f)}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):  # "nan" and ".inf" pass every range check
        raise ConfigError(f"{source}: {path} must be a finite number, got {value!r}")
    if f.choices is not None and value not in f.choices:
        raise ConfigError(f"{source}: {path} must be one of {', '.join(map(str, f.choices))}, got {value!r}")
    return value


def _merge(schema: dict, given: Any, prefix: str, source: str) -> dict[str, Any]:
    """``given`` checked against ``schema``, completed with defaults, in the schema's key order."""
    if not isinstance(given, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the recipe'} must be a mapping, got {given!r}")
    free = prefix.rstrip(".") in _FREE_SECTIONS
    extra = {k: v for k, v in given.items() if k not in schema}
    if extra and not free:
        raise _unknown(prefix + str(next(iter(extra))), source)
    out: dict[str, Any] = {}
    for key, node in schema.items():
        path = prefix + key
        if isinstance(node, dict):  # a section whose keys are all commented out reads as null
            section = given.get(key)
            out[key] = _merge(node, {} if section is None else section, path + ".", source)
        else:
            out[key] = (_check_value(path, node, given[key], source) if key in given
                        else copy.deepcopy(node.default))
    return {**out, **extra}


# Smallest accepted value of numeric keys.
_MINIMUM = {
    "data.batch_size": 1, "data.eval_batch_size": 1, "data.padding": 0, "data.num_classes": 1,
    "data.workers": 0, "data.train_size": 1, "data.test_size": 1, "data.image_size": 1,
    "optim.lr": 0, "optim.momentum": 0, "optim.weight_decay": 0, "schedule.warmup_epochs": 0,
    "schedule.min_lr": 0, "train.epochs": 1, "train.eval_every": 1, "train.checkpoint_every": 0,
    "train.keep_checkpoints": 1, "train.label_smoothing": 0,
}


def _check_ranges(cfg: dict[str, Any], source: str) -> None:
    for path, low in _MINIMUM.items():
        section, key = path.split(".")
        value = cfg[section][key]
        if value is not None and value < low:
            raise ConfigError(f"{source}: {path} must be >= {low}, got {value!r}")
    for path, high, ok in (("optim.momentum", "< 1", lambda v: v < 1), ("schedule.gamma", "> 0", lambda v: v > 0),
                           ("train.label_smoothing", "<= 1", lambda v: v <= 1)):
        section, key = path.split(".")
        if not ok(cfg[section][key]):
            raise ConfigError(f"{source}: {path} must be {high}, got {cfg[section][key]!r}")
    if cfg["schedule"]["min_lr"] > cfg["optim"]["lr"]:
        raise ConfigError(f"{source}: schedule.min_lr ({cfg['schedule']['min_lr']!r}) must not exceed optim.lr "
                          f"({cfg['optim']['lr']!r}): the cosine schedule would rise")
    milestones = cfg["schedule"]["milestones"]
    if not all(isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in milestones) \
            or any(a >= b for a, b in zip(milestones, milestones[1:])):
        raise ConfigError(f"{source}: schedule.milestones must be increasing epoch numbers (>= 0), "
                          f"got {milestones!r}")
    late = [m for m in milestones if m >= cfg["train"]["epochs"]]
    if cfg["schedule"]["name"] == "step" and late:
        # a recipe shortened with --set train.epochs=N keeps its milestones, which are absolute epochs
        warnings.warn(f"{source}: schedule.milestones {late} lie at or past train.epochs="
                      f"{cfg['train']['epochs']}: the learning rate is never lowered there (set "
                      f"schedule.milestones for the shorter run, or schedule.name=cosine)", stacklevel=2)


def resolve(recipe: dict[str, Any], source: str = "recipe") -> dict[str, Any]:
    """Check ``recipe`` against the schema and return it complete, with defaults filled in.

    ``name`` defaults to "run" and ``out_dir`` to ``runs/<name>``. ``source`` prefixes error messages.
    """
    cfg = _merge(SCHEMA, recipe if recipe is not None else {}, "", source)
    _check_ranges(cfg, source)
    cfg["name"] = cfg["name"] or "run"
    cfg["out_dir"] = cfg["out_dir"] or str(Path("runs") / cfg["name"])
    return cfg


def is_resolved(cfg: Any) -> bool:
    """Whether `cfg` has every key of the schema (what `resolve` returns), so that no resolve is needed."""
    def complete(node: dict, given: Any) -> bool:
        return isinstance(given, dict) and all(
            key in given and (not isinstance(field, dict) or complete(field, given[key]))
            for key, field in node.items())
    return complete(SCHEMA, cfg)


def apply_override(recipe: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b=value`` to the raw ``recipe`` in place; the value is parsed as YAML."""
    source = f"--set {assignment}"
    path, sep, text = assignment.partition("=")
    if not sep or not path:
        raise ConfigError(f"{source}: expected KEY=VALUE, e.g. optim.lr=0.05")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: cannot parse the value: {str(err).splitlines()[0]}") from None
    keys = path.split(".")
    if not (keys[0] in _FREE_SECTIONS and len(keys) > 1):
        node: Any = SCHEMA
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                raise _unknown(path, source)
            node = node[key]
        if isinstance(node, dict):
            example = f"{path}.{next(iter(node))}"
            raise ConfigError(f"{source}: {path} is a section; set one of its keys, e.g. {example}")
        value = _check_value(path, node, value, source)
    target = recipe
    for key in keys[:-1]:
        if target.get(key) is None:  # absent, or a section left empty in the file
            target[key] = {}
        target = target[key]
        if not isinstance(target, dict):
            raise ConfigError(f"{source}: {key} is not a mapping in the recipe")
    target[keys[-1]] = value


def read_mapping(file: str | Path) -> dict[str, Any]:
    """The YAML mapping in `file` (a recipe, a run's config.yaml), as written: not resolved. Invalid YAML,
    an empty file or one that is not a mapping raise ConfigError naming the file."""
    try:
        recipe = yaml.safe_load(Path(file).read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{file}: not valid YAML: {' '.join(str(err).split())}") from None
    if recipe is None:  # an empty file would train the defaults, as if it were the recipe meant
        raise ConfigError(f"{file}: the recipe is empty (a mapping of sections is expected, e.g. model:, "
                          "method:, train:; recipes/ has examples)")
    if not isinstance(recipe, dict):
        raise ConfigError(f"{file}: a recipe must be a mapping of sections, got {type(recipe).__name__}")
    return recipe


def _switched_method(recipe: dict[str, Any], before: Any, overrides: list[str], file: Path) -> None:
    """Where ``--set method.name=`` switched the recipe to another method, leave out the recipe's settings
    of the method it named (they were for that one: LRPET's period is an epoch, TRP's a few steps), with a
    warning naming them; settings given with ``--set method.KEY=`` stay."""
    section = recipe.get("method")
    if before is None or not isinstance(section, dict) or section.get("name") == before:
        return
    given = {a.partition("=")[0].strip().removeprefix("method.") for a in overrides
             if a.partition("=")[0].strip().startswith("method.")}
    dropped = [key for key in section if key != "name" and key not in given]
    for key in dropped:
        del section[key]
    if dropped:
        warnings.warn(f"{file}: method.name is {section['name']!r} instead of the recipe's {before!r}: the recipe's "
                      f"settings for {before} ({', '.join(dropped)}) are left out; give {section['name']}'s own "
                      "with --set method.KEY=VALUE")


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a recipe (a YAML file, or a run directory holding config.yaml), apply overrides, resolve.

    ``name`` defaults to the file's stem (for a run directory: the name recorded there).
    """
    path = Path(path)
    file = path / CONFIG_FILE if path.is_dir() else path
    if not file.is_file():
        where = f"{path} has no {CONFIG_FILE}" if path.is_dir() else f"no recipe file {path}"
        raise ConfigError(where)
    recipe = read_mapping(file)
    recipe.setdefault("name", file.stem)
    overrides = [overrides] if isinstance(overrides, str) else list(overrides)  # one, not its characters
    section = recipe.get("method")
    before = section.get("name") if isinstance(section, dict) else None
    for assignment in overrides:
        apply_override(recipe, assignment)
    _switched_method(recipe, before, overrides, file)
    if path.is_dir() and not overrides:  # a run's own config.yaml: what it warns of was said when it started
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return resolve(recipe, source=str(file))
    # a value out of range may come from the file or from an override: name both
    return resolve(recipe, source=f"{file} (with --set {' '.join(overrides)})" if overrides else str(file))


def dump(cfg: dict[str, Any], path: str | Path) -> None:
    """Write a resolved config as YAML (the run directory's config.yaml), atomically: a run killed while
    writing it keeps the previous one, which ``lrtrain train RUN --resume`` reads."""
    from .files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))
