"""Save and load compact models as plain data, and export them for deployment.

A compact model is saved as ``{"format", "arch", "state_dict"}`` where ``arch`` names the registry model it
started from and describes every layer that differs from it (a low-rank conv and its rank, a removed
layer...). Loading rebuilds the model from the registry, replaces those layers, and loads the weights:
no pickled code, so files load with ``torch.load(weights_only=True)`` and need no training code.

For deployment, `export_torchscript`, `export_program` (torch.export), `export_onnx` (needs the ``onnx``
package) and `export_state_dict` write a model in those formats, and `check_export` measures how far the
written file's outputs are from the model's (``lrtrain export`` runs both). A compact model written by the trainer records the input
normalization it was trained with (``arch["normalize"]``); `Normalized` builds it into the model.

    >>> import lrtrain as lr, tempfile, os
    >>> model = lr.factorize(lr.models.create("resnet20"), rank=lr.FlopsBudget(0.5))
    >>> path = os.path.join(tempfile.mkdtemp(), "compact.pt")
    >>> lr.save(model, path, model_name="resnet20", num_classes=10)
    >>> type(lr.load(path).layer1[0].conv1).__name__
    'LowRankConv2d'
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import models
from .files import atomic_write, load_torch_file
from .layers import LowRankConv2d, LowRankLinear
from .metrics import _forward, _inference, model_device, model_dtype
from .pretrained import mismatches
from .surgery import replace_module

FORMAT = 1


def _conv_spec(m: nn.Conv2d) -> dict[str, Any]:
    spec = {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
            "stride": list(m.stride), "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
            "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None}
    if m.padding_mode != "zeros":  # absent otherwise, as in files written before it was recorded
        spec["padding_mode"] = m.padding_mode
    return spec


def _build_conv(s: dict[str, Any]) -> nn.Conv2d:
    padding = s["padding"] if isinstance(s["padding"], str) else tuple(s["padding"])
    return nn.Conv2d(s["in_channels"], s["out_channels"], tuple(s["kernel_size"]), tuple(s["stride"]), padding,
                     tuple(s["dilation"]), s["groups"], s["bias"], s.get("padding_mode", "zeros"))


def _lowrank_conv_spec(m: LowRankConv2d) -> dict[str, Any]:
    g = m.geometry
    rank = list(m.rank) if isinstance(m.rank, tuple) else m.rank
    return {"in_channels": g.in_channels, "out_channels": g.out_channels, "kernel_size": list(g.kernel_size),
            "stride": list(g.stride), "padding": list(g.padding), "dilation": list(g.dilation), "bias": g.bias,
            "scheme": m.scheme.name, "rank": rank}


def _build_lowrank_conv(s: dict[str, Any]) -> LowRankConv2d:
    rank = tuple(s["rank"]) if isinstance(s["rank"], list) else s["rank"]
    return LowRankConv2d(s["in_channels"], s["out_channels"], tuple(s["kernel_size"]), rank, s["scheme"],
                         tuple(s["stride"]), tuple(s["padding"]), tuple(s["dilation"]), s["bias"])


# type name -> (module -> spec, spec -> module). Methods with layer types of their own register them here.
LAYER_TYPES: dict[str, tuple[type, Callable[[nn.Module], dict], Callable[[dict], nn.Module]]] = {
    "LowRankConv2d": (LowRankConv2d, _lowrank_conv_spec, _build_lowrank_conv),
    "LowRankLinear": (LowRankLinear,
                      lambda m: {"in_features": m.in_features, "out_features": m.out_features, "rank": m.rank,
                                 "bias": m.bias is not None},
                      lambda s: LowRankLinear(s["in_features"], s["out_features"], s["rank"], s["bias"])),
    # a BatchNorm folded into its conv (`fold.fold_batchnorm`)
    "Identity": (nn.Identity, lambda m: {}, lambda s: nn.Identity()),
    "Conv2d": (nn.Conv2d, _conv_spec, _build_conv),
}


def register_layer_type(cls: type, describe: Callable[[nn.Module], dict], build: Callable[[dict], nn.Module]) -> None:
    """Teach `save`/`load` a layer type of its own (e.g. a method's removed-layer placeholder)."""
    LAYER_TYPES[cls.__name__] = (cls, describe, build)


def _same(a: nn.Module, b: nn.Module) -> bool:
    return type(a) is type(b) and (not isinstance(a, nn.Conv2d) or _conv_spec(a) == _conv_spec(b))


def describe(model: nn.Module, model_name: str, num_classes: int, *, base: dict[str, nn.Module] | None = None,
             **extra: Any) -> dict[str, Any]:
    """The plain-data architecture of `model` relative to ``models.create(model_name, num_classes)``
    (``base``: that model's `base_modules`, where the caller keeps them between calls)."""
    return _describe(model, base or base_modules(model_name, num_classes), model_name, num_classes, extra)


def base_modules(model_name: str, num_classes: int) -> dict[str, nn.Module]:
    """The modules of ``models.create(model_name, num_classes)`` by name: what `describe` compares with."""
    return dict(rebuild({"model": model_name, "num_classes": num_classes, "layers": {}}).named_modules())


def _describe(model: nn.Module, base: dict[str, nn.Module], model_name: str, num_classes: int,
              extra: dict[str, Any]) -> dict[str, Any]:
    layers: dict[str, dict[str, Any]] = {}
    covered: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(c + ".") for c in covered):
            continue
        kind = type(module).__name__
        if kind in LAYER_TYPES and not (name in base and _same(base[name], module)):
            layers[name] = {"type": kind, **LAYER_TYPES[kind][1](module)}
            covered.append(name)
    return {"model": model_name, "num_classes": num_classes, "layers": layers, **extra}


def rebuild(arch: dict[str, Any]) -> nn.Module:
    """The module `describe` described, with freshly initialized weights (drawn without touching torch's
    global RNG: loading a model must not change the random numbers its caller draws next)."""
    if any(spec["type"] not in LAYER_TYPES for spec in arch["layers"].values()):
        from . import methods  # noqa: F401  (methods register their own layer types when imported)
    for name, spec in arch["layers"].items():
        if spec["type"] not in LAYER_TYPES:
            raise ValueError(f"layer {name!r} has type {spec['type']!r}, which this version of lrtrain cannot "
                             f"build (known: {', '.join(LAYER_TYPES)})")
    with torch.random.fork_rng(devices=[]):
        model = models.create(arch["model"], num_classes=arch["num_classes"])
        for name, spec in arch["layers"].items():
            replace_module(model, name, LAYER_TYPES[spec["type"]][2](spec))
    return model


def _resized(arch: dict[str, Any], base: dict[str, nn.Module]) -> list[str]:
    """The replaced layers whose inputs or outputs differ from the layer they replace in the registry model
    (`base`: its modules by name; a factorized classifier keeps its own size, so a wrong `num_classes`
    shows only here)."""
    return [f"{name}: {key} {spec[key]} vs {getattr(base[name], key)}"
            for name, spec in arch["layers"].items()
            for key in ("in_channels", "out_channels", "in_features", "out_features")
            if key in spec and name in base and getattr(base[name], key, spec[key]) != spec[key]]


def _other_modules(model: nn.Module, rebuilt: nn.Module) -> list[str]:
    """The modules of `model` of another type than `rebuilt`'s of the same name (an activation swapped for
    another: the same weights, another function), said as ``name: Type vs Type``."""
    built = dict(rebuilt.named_modules())
    return [f"{name}: {type(m).__name__} vs {type(built[name]).__name__}" for name, m in model.named_modules()
            if name in built and type(m) is not type(built[name])]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save(model: nn.Module, path: str | Path, model_name: str, num_classes: int, **extra: Any) -> None:
    """Write `model` (a registry model, possibly with low-rank layers) so that `load` rebuilds it.

    The tensors are written from the CPU in the standard (NCHW) layout and their own dtype: `load` gives
    the model back in that dtype, on its `map_location`; a channels-last model is made so again with
    ``model.to(memory_format=torch.channels_last)``.
    """
    if extra.get("normalize") is not None:
        from .data import normalization_stats

        normalization_stats(extra["normalize"])  # a malformed record fails now, not where it is used
    own = ("a model of your own: register it with lrtrain.models.register_model so that load can build it, "
           "or torch.save the whole module")
    if model_name not in models.list_models():
        raise ValueError(f"save: {model_name!r} is not a registry model name (lrtrain.models.list_models(): "
                         f"{', '.join(models.list_models())}); save writes registry models, which load rebuilds "
                         f"by name ({own})")
    base = base_modules(model_name, num_classes)
    arch = _describe(model, base, model_name, num_classes, extra)
    state = _state(model)
    # checked now, not when `load` fails on the file: the name and classes must rebuild this very model
    problems = [f"{name}: the registry model has no {_first_missing(name, base)}" for name in arch["layers"]
                if name not in base]
    if not problems:
        rebuilt = rebuild(arch)
        problems = _resized(arch, base) or mismatches(state, rebuilt.state_dict()) or _other_modules(model, rebuilt)
    if problems:
        raise ValueError(f"save: {type(model).__name__} is not models.create({model_name!r}, "
                         f"num_classes={num_classes}) with its low-rank layers (model vs that): "
                         f"{'; '.join(problems[:4])}{' and more' if len(problems) > 4 else ''} ({own})")
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "arch": arch, "state_dict": state}, f))


def _first_missing(name: str, modules: dict[str, nn.Module]) -> str:
    """The shortest prefix of the module path `name` that `modules` lacks (``features.1.block`` of
    ``features.1.block.0.0``): where the two models part."""
    parts = name.split(".")
    return next(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) not in modules)


def load_with_arch(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """`load`, also returning the file's ``arch`` (model name, classes, layers, input size when known)."""
    return from_blob(load_torch_file(path, "compact model", map_location), path, map_location)


def from_blob(blob: Any, path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """`load_with_arch` of a file already read (`path` names it in errors)."""
    if not isinstance(blob, dict) or "arch" not in blob or "state_dict" not in blob:
        hint = " (a training checkpoint: make a compact model of it with lrtrain compress)" \
            if isinstance(blob, dict) and "config" in blob else ""
        raise ValueError(f"{path} is not a compact model written by lrtrain (no 'arch'/'state_dict'){hint}")
    arch = blob["arch"]
    if blob.get("format", FORMAT) != FORMAT:  # written by another version of lrtrain
        raise ValueError(f"{path} is a compact model file of format {blob['format']!r}; this version of lrtrain "
                         f"reads format {FORMAT}")
    if "layers" not in arch:
        raise ValueError(f"{path} holds the weights of a {arch.get('model', 'model')} that was given to the "
                         "trainer as a module, not by registry name, so lrtrain cannot rebuild it; its run's "
                         "compact_module.pt has the whole module (torch.load(..., weights_only=False))")
    model = rebuild(arch)
    dtypes = {t.dtype for t in blob["state_dict"].values() if torch.is_tensor(t) and t.is_floating_point()}
    if len(dtypes) == 1:  # a half-precision model stays one
        model.to(dtypes.pop())
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{path}: the weights do not fit the described architecture: "
                         f"{' '.join(str(err).split())[:300]}") from None
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval(), arch


def load(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a model written by `save` (or a run's ``compact.pt``), in eval mode."""
    return load_with_arch(path, map_location)[0]


# ---------------------------------------------------------------------------------------------- export

EXPORT_FORMATS = ("torchscript", "exported", "onnx", "state_dict")


class Normalized(nn.Module):
    """`model` taking RGB images in the 0–1 scale: it normalizes them itself, ``model((x - mean) / std)``,
    with a trained model's recorded ``normalize`` (``{"mean": [...], "std": [...]}``, per channel). For
    exports whose users should not have to know the training data's statistics.

        >>> net = Normalized(nn.Identity(), {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
        >>> net(torch.ones(1, 3, 2, 2)).flatten()[:2].tolist()
        [2.0, 2.0]
    """

    def __init__(self, model: nn.Module, normalize: dict[str, list[float]]):
        from .data import normalization_stats  # checks the record

        super().__init__()
        mean, std = (t / 255 for t in normalization_stats(normalize))
        self.model = model
        # in the model's place and dtype (a bf16 or CUDA model takes its input so); float32 arithmetic
        device, dtype = model_device(model), model_dtype(model)
        self.register_buffer("mean", mean.view(1, -1, 1, 1).to(device))
        self.register_buffer("std", std.view(1, -1, 1, 1).to(device))
        self.register_buffer("input_dtype", torch.zeros((), dtype=dtype, device=device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.to(self.mean.device, torch.float32) - self.mean) / self.std
        return self.model(x.to(self.input_dtype.dtype))


def _deployable(model: nn.Module, quiet: bool = False) -> nn.Module:
    """A CPU float32 copy in eval mode (exports are for inference, and the caller's model stays as it is).
    A bf16/fp16 model's weights convert exactly; a float64 model's are rounded, which is said."""
    if not quiet and any(p.dtype == torch.float64 for p in model.parameters()):
        warnings.warn("export: the model is float64; the file holds it in float32 (its weights rounded to "
                      "float32, its input float32)", stacklevel=3)
    return copy.deepcopy(model).cpu().float().eval()


class _ImagesOnly(nn.Module):
    """`model` called with the images alone: the ONNX exporter makes every argument of ``forward`` a graph
    input, one with a default too (``forward(x, scale=1.0)`` would need a second input fed)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        return self.model(images)


def _example(input_size) -> torch.Tensor:
    return torch.randn(tuple(input_size), generator=torch.Generator().manual_seed(0))


def export_torchscript(model: nn.Module, path: str | Path, input_size=(1, 3, 32, 32)) -> None:
    """Write `model` as TorchScript (``torch.jit.load`` reads it without lrtrain).

    The model is scripted (any batch size, any input size); a model that cannot be scripted is traced on a
    random input of `input_size`.
    """
    net = _deployable(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but still the C++ path
        try:
            module = torch.jit.script(net)
        except Exception:
            with torch.no_grad():
                module = torch.jit.trace(net, _example(input_size))
        atomic_write(path, lambda f: torch.jit.save(module, f))


def export_program(model: nn.Module, path: str | Path, input_size=(1, 3, 32, 32)) -> None:
    """Write `model` as a torch.export ExportedProgram (``.pt2``; ``torch.export.load(path).module()`` runs
    it without lrtrain; AOTInductor and ExecuTorch start from it): TorchScript's successor in PyTorch.

    The graph is captured at `input_size` with the batch dimension dynamic (any batch from 1); the
    other dimensions are fixed.
    """
    if Path(path).suffix != ".pt2":  # torch.export.load takes no other name
        raise ValueError(f"an ExportedProgram file's name ends in .pt2 (torch.export.load refuses others): {path}")
    net = _deployable(model)
    # An example batch of 1 would fix the batch at 1: torch.export specializes dimensions of size 0 and 1.
    example = _example((max(2, input_size[0]), *input_size[1:]))
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
    except Exception as err:
        raise ValueError(f"torch.export could not capture the model with a batch dimension that varies "
                         f"({_first_line(err)}): export torchscript or onnx instead") from None
    atomic_write(path, lambda f: torch.export.save(program, f))


def _first_line(err: Exception) -> str:
    """The first non-empty line of `err`'s message, at most 200 characters: torch's own words run to pages
    of traced shapes or graphs."""
    first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
    return first.strip()[:200]


def export_onnx(model: nn.Module, path: str | Path, input_size=(1, 3, 32, 32), opset: int | None = None) -> None:
    """Write `model` as ONNX (input ``images``, output ``logits``, the batch dimension dynamic).

    Uses the TorchScript-based exporter (the newer one needs ``onnxscript``); needs the ``onnx`` package.
    """
    try:
        import onnx  # noqa: F401  (torch.onnx needs it to write the file)
    except ImportError:
        raise ValueError("ONNX export needs the onnx package: pip install onnx (onnxruntime too, to check "
                         "the exported model)") from None
    net = _ImagesOnly(_deployable(model))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and constant-folding notes
        try:
            torch.onnx.export(net, (_example(input_size),), buffer, dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        except Exception as err:  # an opset out of the exporter's range, or an operator it lacks there
            at = f"opset {opset}" if opset is not None else "its default opset"
            raise ValueError(f"the ONNX exporter could not write the model at {at} ({_first_line(err)})"
                             + ("; try another --opset or leave it out" if opset is not None else "")) from None
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def export_state_dict(model: nn.Module, path: str | Path) -> None:
    """Write the model's state_dict alone: plain tensors, for ``torch.load(weights_only=True)``.

    It fits ``rebuild(arch)`` (or the model `load` returns) for ``arch`` the architecture `describe` gives.
    """
    state = _state(model)
    atomic_write(path, lambda f: torch.save(state, f))


STATE_DICT_HAS_NO_NORMALIZATION = (
    "a state_dict holds weights only: it cannot carry the input normalization (export torchscript, exported or "
    "onnx, or wrap the model in lrtrain.export.Normalized after loading)")

EXPORTERS: dict[str, Callable[..., None]] = {
    "torchscript": lambda model, path, input_size: export_torchscript(model, path, input_size),
    "exported": lambda model, path, input_size: export_program(model, path, input_size),
    "onnx": lambda model, path, input_size, opset=None: export_onnx(model, path, input_size, opset),
    "state_dict": lambda model, path, input_size: export_state_dict(model, path),
}
OPTIONS = {"onnx": ("opset",)}  # what `export` passes on, per format


def _check_input_size(model: nn.Module, input_size) -> None:
    """A ValueError naming `input_size` where the model cannot run on it (not torch's shape error)."""
    with _inference(model, input_size) as x:
        _forward(model, x)


def _with(model: nn.Module, normalize: dict[str, list[float]] | None) -> nn.Module:
    return Normalized(model, normalize) if normalize else model


def export(model: nn.Module, path: str | Path, format: str, input_size=(1, 3, 32, 32),
           normalize: dict[str, list[float]] | None = None, **options: Any) -> None:
    """Write `model` to `path` in `format` (one of `EXPORT_FORMATS`); with ``normalize`` (a trained model's
    record, ``arch["normalize"]``) the written model takes 0–1 RGB images and normalizes them itself.
    ``options``: ``opset=N`` for ONNX (default: the exporter's); another format refuses them."""
    if format not in EXPORTERS:
        raise ValueError(f"unknown export format {format!r}; valid formats: {', '.join(EXPORT_FORMATS)}")
    unknown = [k for k in options if k not in OPTIONS.get(format, ())]
    if unknown:
        raise ValueError(f"export to {format} takes no option {unknown[0]!r}"
                         + (f" (it takes {', '.join(OPTIONS[format])})" if format in OPTIONS else ""))
    if normalize and format == "state_dict":
        raise ValueError(STATE_DICT_HAS_NO_NORMALIZATION)
    _check_input_size(model, input_size)
    EXPORTERS[format](_with(model, normalize), path, tuple(input_size), **options)


def check_export(model: nn.Module, path: str | Path, format: str, input_size=(1, 3, 32, 32),
                 normalize: dict[str, list[float]] | None = None) -> float | None:
    """Largest absolute difference between the exported file's outputs and the model's (normalizing its
    input by ``normalize`` where the file was written so) on a random batch: the model in float32, as the
    file holds it (a bf16 or fp16 model's own outputs differ from both by its rounding of activations).

    The batch has one more image than `input_size` says (the exported batch dimension must not be fixed).
    None for ONNX when onnxruntime is not installed.
    """
    _check_input_size(model, input_size)
    net = _deployable(_with(model, normalize), quiet=True)  # the float32 model the file was written from
    size = (input_size[0] + 1, *input_size[1:])
    x = torch.randn(size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(x)
        if format == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                got = torch.jit.load(str(path), map_location="cpu")(x)
        elif format == "exported":
            got = torch.export.load(str(path)).module()(x)
        elif format == "state_dict":
            other = copy.deepcopy(net)
            other.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            got = other(x)
        elif format == "onnx":
            try:
                import onnxruntime
            except ImportError:
                return None
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        else:
            raise ValueError(f"unknown export format {format!r}; valid formats: {', '.join(EXPORT_FORMATS)}")
    return (got.float() - expected.float()).abs().max().item()
