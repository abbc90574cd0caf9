"""Per-layer tables of a model and the `compress` pipeline behind ``lrtrain info`` and ``lrtrain compress``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import export, models
from .layers import LowRankConv2d, LowRankLinear
from .metrics import Counts, count
from .pretrained import classifier_name, mismatches
from .schemes import get_scheme
from .surgery import Decision, factorize, plan, why_none

_DATASET_CLASSES = {"cifar10": 10, "cifar100": 100}


def _fmt_rank(r) -> str:
    return "" if r is None else "x".join(map(str, r)) if isinstance(r, tuple) else str(r)


def decision_table(decisions: list[Decision]) -> str:
    """A fixed-width table: layer, weight shape, dense MACs, chosen rank, MACs after, and why a layer stays dense."""
    rows = [("layer", "shape", "MACs", "rank/max", "MACs after", "note")]
    for d in decisions:
        rank = f"{_fmt_rank(d.rank)}/{_fmt_rank(d.max_rank)}" if d.rank is not None else ""
        rows.append((d.name, "x".join(map(str, d.shape)), f"{d.dense_flops:,}", rank,
                     f"{d.flops:,}", "factorized" if d.factorize else d.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) if i in (0, 1, 3) else c.rjust(w) for i, (c, w) in
                               enumerate(zip(r[:5], widths))) + "  " + r[5] for r in rows)


def totals_line(before: nn.Module, after: nn.Module, input_size) -> str:
    return counts_line(count(before, input_size), count(after, input_size))


def counts_line(b: Counts, a: Counts) -> str:
    """MACs and params before (`b`) and after (`a`), in one line."""
    return (f"MACs {b.flops / 1e6:.2f} M -> {a.flops / 1e6:.2f} M ({b.flops / a.flops:.2f}x fewer), "
            f"params {b.params / 1e6:.3f} M -> {a.params / 1e6:.3f} M")


def info(model_name: str | Path, rank="energy:0.95", scheme: str = "channel", skip=(), input_size=None,
         num_classes: int = 10) -> str:
    """The per-layer table of a registry model under a scheme and rank policy (random weights: spectra
    of an untrained model only show what eligibility and costs would be), or of a trained model's weights
    when `model_name` is the path of one (a run directory, a checkpoint or a compact model file)."""
    if Path(model_name).exists():
        model, _, _, trained_size, _ = load_trained(model_name)
        _refuse_compact(model, model_name, "--rank plans the decomposition of a dense model's weights (info "
                        "without --rank shows what each layer of this one became)")
        size = tuple(input_size or trained_size)
    else:
        model = models.create(model_name, num_classes=num_classes)
        size = tuple(input_size or models.default_input_size(model_name))
    decisions = plan(model, rank, scheme, skip, size)
    before, after = sum(d.dense_flops for d in decisions), sum(d.flops for d in decisions)
    return (decision_table(decisions) + f"\nconv/linear MACs {before / 1e6:.2f} M -> {after / 1e6:.2f} M "
            f"({before / after:.2f}x fewer); {sum(d.factorize for d in decisions)} of {len(decisions)} layers factorized")


def input_line(normalize: dict[str, list[float]] | None) -> str:
    """What input a trained model expects, from its recorded normalization (None: not recorded)."""
    if not normalize:
        return "input: normalization not recorded in this file (written by an older lrtrain)"
    mean, std = (", ".join(f"{v:.4f}" for v in normalize[key]) for key in ("mean", "std"))
    return f"input: RGB scaled to 0-1, then (x - mean) / std per channel, mean [{mean}], std [{std}]"


def trained_info(path: str | Path, input_size=None) -> str:
    """The per-layer table of a trained model (a run directory: its compact.pt, else its newest checkpoint;
    a compact model file; a checkpoint): each conv/linear layer of the dense model, its MACs, what it is now
    (dense, a factorized scheme at its rank, or cut out) and its MACs now, then the totals; MACs at
    ``input_size`` (default: the size it was trained at)."""
    file = scored_file(path)
    state = load_trained_file(file)
    model, name, classes, trained_size, facts = from_state(state, file)
    # a checkpoint of TRP in the spatial scheme projected its weights' spatial matrix forms
    method = state.get("config", {}).get("method", {}) if isinstance(state, dict) else {}
    form_scheme = "spatial" if method.get("name") == "trp" and method.get("scheme") == "spatial" else "channel"
    size = tuple(input_size or trained_size)
    dense = models.create(name, num_classes=classes)
    before, after = count(dense, size), count(model, size)
    factorized = _factorized(model)
    rows = [("layer", "MACs", "now", "MACs now")]
    for layer, dense_count in before.layers.items():
        if layer in factorized:
            m = factorized[layer]
            scheme = m.scheme.name if isinstance(m, LowRankConv2d) else "linear"
            form = f"{scheme} rank {_fmt_rank(m.rank)}/{_fmt_rank(m.max_rank)}"
            macs = sum(c.flops for n, c in after.layers.items() if n.startswith(layer + "."))
        elif layer in after.layers:
            form, macs = _dense_form(model.get_submodule(layer), form_scheme), after.layers[layer].flops
        else:  # replaced by a layer without MACs (LRPET's vanished conv)
            form, macs = "cut out", 0
        rows.append((layer, f"{dense_count.flops:,}", form, f"{macs:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    table = "\n".join("  ".join(c.ljust(w) if i in (0, 2) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                      for r in rows)
    return (f"{file} ({name}, {classes} classes, input {'x'.join(map(str, size))})\n{table}\n"
            f"{len(factorized)} of {len(before.layers)} layers factorized; {counts_line(before, after)}\n"
            f"{input_line(facts.get('normalize'))}")


def _dense_form(module: nn.Module, scheme: str = "channel") -> str:
    """"dense", or "dense, rank r/max" where the weight (a conv's in the matrix form of `scheme`, channel:
    out × in·k², spatial: in·k × out·k) is of lower numerical rank: a TRP or LRPET checkpoint's projected
    layers, trained low-rank in their dense form."""
    w = getattr(module, "weight", None)
    if not torch.is_tensor(w) or w.dim() < 2:
        return "dense"
    mat = (get_scheme(scheme).to_matrix(w.detach()) if w.dim() == 4 else w.detach()).double()
    if not torch.isfinite(mat).all():  # a diverged weight has no rank to give
        return "dense (NaN/Inf weights)"
    top = min(mat.shape)
    rank = int(torch.linalg.matrix_rank(mat, rtol=1e-4))  # TRP's numerical rank (a zero weight's: 0)
    return "dense" if rank == top else f"dense, rank {rank}/{top}"


def load_trained(path: str | Path) -> tuple[nn.Module, str, int, tuple, dict[str, Any]]:
    """A trained model from a run directory, a trainer checkpoint or a compact model file.

    Returns ``(model, model name, num_classes, input size, extra)``, ``extra`` holding what the file
    records of its data (`data.MODEL_FACTS`: class names, input normalization...).
    """
    path = trained_file(path)
    return from_state(load_trained_file(path), path)


def load_trained_file(path: str | Path) -> Any:
    """The content of a compact model file or checkpoint (`files.load_torch_file`: a damaged one is a
    ValueError naming it)."""
    from .files import load_torch_file

    return load_torch_file(path, "compact model or checkpoint")


def trained_with_arch(file: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """`export.load_with_arch` of a compact model file, or of a trainer checkpoint (the model as trained so
    far; its arch: model name, classes, input size and what it records of its data)."""
    return with_arch(load_trained_file(file), file)


def with_arch(state: Any, file: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """`trained_with_arch` of a file already read."""
    if isinstance(state, dict) and "arch" in state:
        return export.from_blob(state, file)
    model, name, classes, size, facts = from_state(state, Path(file))
    return model, {"model": name, "num_classes": classes, "input_size": list(size), **facts}


def scored_file(path: str | Path) -> Path:
    """The file that stands for a trained model: a run directory's compact.pt, else `trained_file`'s."""
    path = Path(path)
    return path / "compact.pt" if path.is_dir() and (path / "compact.pt").is_file() else trained_file(path)


def trained_file(path: str | Path) -> Path:
    """The file `load_trained` reads for `path`: a run directory's newest checkpoint, else its compact.pt."""
    from .train.checkpoint import list_checkpoints

    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path / "checkpoints")
        if found:
            return found[-1]
        if (path / "compact.pt").exists():  # a finished run whose checkpoints were cleared away
            return path / "compact.pt"
        raise FileNotFoundError(f"no checkpoint in {path / 'checkpoints'} and no compact.pt in {path}")
    if not path.exists():
        raise FileNotFoundError(f"no such run directory, compact model or checkpoint: {path}")
    return path


def from_state(state: Any, path: Path) -> tuple[nn.Module, str, int, tuple, dict[str, Any]]:
    """`load_trained` of a file already read (`path` names it in errors)."""
    if isinstance(state, dict) and "arch" in state:
        arch = state["arch"]
        return export.from_blob(state, path)[0], arch["model"], arch["num_classes"], \
            tuple(arch.get("input_size") or models.default_input_size(arch["model"])), _facts(arch)
    cfg = state.get("config") if isinstance(state, dict) else None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or "name" not in cfg["model"] \
            or not isinstance(state.get("model"), dict):
        raise ValueError(f"{path} is neither an lrtrain checkpoint nor a compact model")
    name = cfg["model"]["name"]
    weights = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state["model"].items()}
    if "layers" in state and state["layers"] is None:
        raise ValueError(f"{path} is a checkpoint of a model given to the trainer as a module, which lrtrain "
                         "cannot rebuild: load its weights (the checkpoint's 'model') into that module")
    classes = state.get("num_classes") or _classes(name, cfg, weights)  # absent from older checkpoints
    layers = state.get("layers")  # absent from checkpoints written before lrtrain recorded them
    model = export.rebuild({"model": name, "num_classes": classes, "layers": layers or {}})
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        problems = "; ".join(mismatches(weights, model.state_dict()))
        hint = "" if "layers" in state else (
            f"; a checkpoint written by an older lrtrain of a run whose method changed the layers "
            f"({cfg['method']['name']}) holds them as trained without saying how: use the run's compact.pt, "
            "which it writes when it finishes")
        raise ValueError(f"{path}: its weights do not fit {'the layers it describes' if layers else f'a dense {name}'}"
                         f" ({problems}){hint}") from None
    data = cfg["data"]
    side = {"folder": data.get("image_size") or 224, "sample": data.get("image_size")}.get(data["name"])
    size = (1, 3, side, side) if side else models.default_input_size(name)  # the size it was trained at
    return model.eval(), name, classes, size, _facts(state)


def _facts(holder: dict[str, Any]) -> dict[str, Any]:
    """What `holder` (an arch, a checkpoint) records of its data (`data.MODEL_FACTS`: class names, input
    normalization, evaluation resize; and ``trained_on``, `trained_on`), where it does."""
    from .data import MODEL_FACTS

    facts = {key: holder[key] for key in MODEL_FACTS if holder.get(key)}
    trained = holder.get("trained_on") or trained_on(holder.get("config"))
    return {**facts, "trained_on": trained} if trained else facts


def trained_on(config: Any) -> dict[str, Any] | None:
    """``{"data": ..., "seed": ...}`` of a run's config: the data settings a model file records, so that
    `lrtrain evaluate` scores it on its own test split away from its run's folder (None: no config)."""
    if not isinstance(config, dict) or not isinstance(config.get("data"), dict):
        return None
    return {"data": dict(config["data"]), "seed": config.get("seed")}


def _classes(name: str, cfg: dict[str, Any], weights: dict[str, Any]) -> int:
    """The class count the checkpoint's model was built with: its classifier's rows when the weights hold
    it (the data set's count need not be it), else from the config."""
    head = weights.get(f"{classifier_name(export.rebuild({'model': name, 'num_classes': 10, 'layers': {}}))}.weight")
    if head is not None and getattr(head, "ndim", 0) == 2:
        return int(head.shape[0])
    data = cfg["data"]
    return cfg["model"].get("num_classes") or (data.get("num_classes") if data["name"] == "sample" else None) \
        or _DATASET_CLASSES.get(data["name"], 10)


def _factorized(model: nn.Module) -> dict[str, nn.Module]:
    """The factorized layers of `model` by name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (LowRankConv2d, LowRankLinear))}


def _refuse_compact(model: nn.Module, path, advice: str) -> None:
    """ValueError where the model `path` holds is already factorized: planning on it would weigh only the
    layers left dense (and show their MACs as the model's)."""
    factorized = list(_factorized(model))
    if factorized:
        raise ValueError(f"{path} is already a compact model ({len(factorized)} factorized layers, e.g. "
                         f"{factorized[0]}): {advice}")


def compress(path: str | Path, out: str | Path, rank="energy:0.95", scheme: str = "channel", skip=()) -> dict[str, Any]:
    """Decompose a trained model and write the compact model to `out`; returns the tables to print. A run
    directory gives its compact.pt where that is dense (a finished dense run: its BatchNorm statistics as
    the run scored them, re-estimated where train.bn_recalibrate asked), else its newest checkpoint (a
    TRP or LRPET run's weights in dense form)."""
    import copy

    finished = Path(path) / "compact.pt"
    loaded = load_trained(finished) if Path(path).is_dir() and finished.is_file() else None
    model, name, classes, size, names = loaded if loaded and not _factorized(loaded[0]) else load_trained(path)
    # compressing again would cut only what the first time left dense, at other rules
    _refuse_compact(model, path, "compress the dense model it came from (a dense run or checkpoint; a TRP or "
                    "LRPET run's checkpoints hold their weights in dense form)")
    decisions = plan(model, rank, scheme, skip, size)
    note = ""
    if not any(d.factorize for d in decisions):
        if all(d.rank is None for d in decisions):  # not one layer is eligible: the request cannot work
            raise ValueError(f"no layer was factorized, so there is nothing to compress ({why_none(decisions, model)})")
        note = f"no layer was factorized: at these ranks none is cheaper than dense ({why_none(decisions, model, 1)})"
    with warnings.catch_warnings():  # "no layer was factorized" is the note above
        warnings.simplefilter("ignore", UserWarning)
        compact = factorize(copy.deepcopy(model), rank, scheme, skip, size)
    export.save(compact, out, name, classes, input_size=list(size), **names)
    with torch.no_grad():
        x = torch.randn(size)
        drift = (compact(x) - model(x)).abs().max().item()
    return {"table": decision_table(decisions), "totals": totals_line(model, compact, size), "drift": drift,
            "note": note}
