"""Starting a model from trained weights: a state_dict file, or a checkpoint or compact model holding one."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .files import load_torch_file


def load_pretrained(model: nn.Module, path: str | Path, owner: str = "weights") -> None:
    """Load the weights in ``path`` into ``model``, in place.

    ``path`` (a file, or a run directory: its newest checkpoint, else its compact.pt) holds a state_dict
    (e.g. torchvision's ``resnet50-*.pth``), or a dict holding one under
    ``"model"`` (a lrtrain training checkpoint) or ``"state_dict"`` (a ``compact.pt`` of a dense run).
    Errors name ``owner`` (the option that gave the path) and what is wrong: no such file, not a
    PyTorch file, no state_dict in it, or the keys and shapes that do not fit the model.
    """
    path = Path(path)
    if path.is_dir():  # a run directory: its model as last trained (its newest checkpoint, else compact.pt)
        from .inspection import trained_file

        try:
            path = trained_file(path)
        except FileNotFoundError as err:
            raise ValueError(f"{owner}: {err}") from None
    if not path.is_file():
        raise ValueError(f"{owner}: no file {str(path)!r}")
    try:
        state = load_torch_file(path, "weights file")
    except ValueError as err:
        raise ValueError(f"{owner}: {err}") from None
    held = _what_it_holds(state)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{owner}: {str(path)!r} holds no state_dict (a dict of tensors, or one under "
                         "'model' or 'state_dict')")
    own = model.state_dict()
    head = _other_head(model, state, own)
    if head:  # e.g. torchvision's 1000 ImageNet classes for a folder of 3: the rest is what one starts from
        name, theirs, ours = head
        state, own = _without(state, name), _without(own, name)
        warnings.warn(f"{owner}: the classifier {name} has {theirs} outputs in {str(path)!r} and {ours} here: "
                      f"every other weight is loaded, {name} starts freshly initialized (to load it too, set "
                      f"model.num_classes={theirs})")
    # Checked before loading: load_state_dict copies every tensor that fits before it raises for the rest.
    problems = mismatches(state, own)
    if problems:
        raise ValueError(f"{owner}: the weights in {str(path)!r}{held} do not fit {type(model).__name__} "
                         f"(file vs model): {'; '.join(problems)}")
    model.load_state_dict(state, strict=not head)


def _what_it_holds(blob) -> str:
    """What a lrtrain file says of its model, for a mismatch's message: " (a resnet56's, ...)", else ""."""
    if not isinstance(blob, dict):
        return ""
    if isinstance(blob.get("arch"), dict):  # a compact model file
        arch = blob["arch"]
        factorized = "a compact model with factorized layers: start from a dense model's weights (a dense run, " \
            "or a TRP/LRPET run's checkpoint)" if arch.get("layers") else "a dense model"
        return f" (a {arch.get('model', 'model')}'s, {factorized})"
    config = blob.get("config")
    if isinstance(config, dict) and isinstance(config.get("model"), dict) and "name" in config["model"]:
        return f" (a {config['model']['name']}'s, a lrtrain checkpoint)"
    return ""


def _other_head(model: nn.Module, state: dict[str, torch.Tensor],
                own: dict[str, torch.Tensor]) -> tuple[str, int, int] | None:
    """(name, the file's outputs, the model's) of the model's classifier (its last Linear) where only its
    number of outputs keeps `state` from loading; None otherwise."""
    name = classifier_name(model)
    key = f"{name}.weight"
    if key not in state or key not in own or state[key].ndim != 2 or state[key].shape[1:] != own[key].shape[1:] \
            or state[key].shape[0] == own[key].shape[0]:
        return None
    return None if mismatches(_without(state, name), _without(own, name)) else \
        (name, int(state[key].shape[0]), int(own[key].shape[0]))


def classifier_name(model: nn.Module) -> str | None:
    """The name of `model`'s classifier: its last nn.Linear (None without one)."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _without(state: dict[str, torch.Tensor], module: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(module + ".")}


def mismatches(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> list[str]:
    """What keeps `state` from loading into a model whose state_dict is `own`: missing and unexpected keys,
    other shapes (the first few of each)."""
    problems = _listed("missing", [k for k in own if k not in state])
    problems += _listed("unexpected", [k for k in state if k not in own])
    problems += _listed("other shapes", [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                         for k in own if k in state and state[k].shape != own[k].shape])
    return problems


def _listed(what: str, keys: list[str], most: int = 4) -> list[str]:
    if not keys:
        return []
    more = f" and {len(keys) - most} more" if len(keys) > most else ""
    return [f"{what}: {', '.join(keys[:most])}{more}"]
