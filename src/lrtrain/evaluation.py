"""How well a model classifies a data set's test split: `evaluate`, the trainer's end-of-epoch test, and
``lrtrain evaluate`` on a run, a compact model file or a checkpoint.

    >>> import torch, lrtrain as lr
    >>> batches = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))]
    >>> result = lr.evaluate(lr.models.create("resnet20"), batches)
    >>> sorted(result), result["images"]
    (['images', 'test_acc', 'test_loss', 'top5_acc'], 8)
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .metrics import eval_mode, model_device, model_dtype

SUMS = ("loss", "top1", "top5", "images")  # the entries of `score_sums`


@torch.no_grad()
def score_sums(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], amp: bool = False) -> Tensor:
    """Summed cross-entropy, top-1 and top-5 hits and images over `batches`, in eval mode (the model's
    modes are restored after), as one float64 tensor on the model's device: no host sync per batch."""
    device, dtype = model_device(model), model_dtype(model)  # a bf16 model takes bf16 images
    sums = torch.zeros(len(SUMS) - 1, dtype=torch.float64, device=device)
    images_seen = 0  # counted on the host: exact and free
    with eval_mode(model):
        for images, labels in batches:
            images, labels = images.to(device, dtype, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(images).float()
            top5 = (logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]).any(1)
            sums += torch.stack([F.cross_entropy(logits, labels, reduction="sum"),
                                 (logits.argmax(1) == labels).sum(), top5.sum()]).double()  # argmax: ties as before
            images_seen += labels.shape[0]
    return torch.cat([sums, sums.new_tensor([images_seen])])


def shown_batches(loader, label: str = "test", show: bool = True) -> Iterable[tuple[Tensor, Tensor]]:
    """`loader`'s batches (an lrtrain data loader: ``.batches()`` and a length) with a progress bar named
    `label` on a terminal (none in a log file, nor where ``show`` is False): an ImageNet-size test split
    takes minutes on a CPU."""
    from tqdm import tqdm

    return tqdm(loader.batches(), total=len(loader), desc=label, leave=False, dynamic_ncols=True,
                disable=None if show else True)


def summarize(sums: Tensor) -> dict[str, Any]:
    """`score_sums` (all processes' summed) as mean loss, top-1 and top-5 accuracy (%) and images."""
    loss, top1, top5, images = sums.tolist()
    if not images:
        raise ValueError("the test split holds no image: nothing to evaluate")
    return {"test_loss": loss / images, "test_acc": 100.0 * top1 / images, "top5_acc": 100.0 * top5 / images,
            "images": int(images)}


def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], amp: bool = False) -> dict[str, Any]:
    """Mean test loss, top-1 and top-5 accuracy (%) of `model` over `batches` of (images, labels), e.g. a
    torch DataLoader or ``lrtrain.data.build_data(...).test.batches()``; ``amp``: bf16 autocast."""
    return summarize(score_sums(model, batches, amp))


# ------------------------------------------------------------------------------------- lrtrain evaluate

class Source(NamedTuple):
    """A trained model and where its data come from (`resolve_source`)."""

    model: nn.Module
    recipe: dict[str, Any]  # resolved: the run's data settings (then any overrides), else the defaults
    arch: dict[str, Any]    # model name, classes, input size, what it records of its data (`inspection.with_arch`)
    what: str               # a phrase naming what was loaded
    from_run: bool          # the recipe's data are the run's own (its config.yaml, its checkpoint's, or those
                            # its compact model file records)
    note: str = ""          # what a reader of the score should know (a checkpoint's BatchNorm statistics)


def resolve_source(path: str | Path, overrides: list[str]) -> Source:
    """The model `path` names (a run directory: its compact.pt, else its newest checkpoint; a compact model
    file; a checkpoint), the resolved recipe its data come from (the run's config.yaml, else the
    checkpoint's, else the defaults; then `overrides`, data.* keys only), its ``arch``
    (`inspection.with_arch`), a phrase naming what was loaded and a note on the score, if any."""
    from .config import apply_override, load_recipe, resolve
    from .inspection import load_trained_file, scored_file, with_arch

    bad = [key for key in overrides if not key.startswith("data.")]
    if bad:
        raise ValueError(f"--set {bad[0]}: evaluate takes data.* keys only (the model is what the file holds)")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such run directory, compact model or checkpoint: {path}")
    run_dir = path if path.is_dir() else None
    file = scored_file(path)
    state = load_trained_file(file)
    model, arch = with_arch(state, file)
    config, note = None, ""
    if "arch" in state:  # a compact model (`with_arch` has read it as a dict)
        what, run_dir = f"{file} (compact model)", run_dir or file.parent  # it sits beside its run's config.yaml
    else:
        what = f"{file} (checkpoint: the model as trained so far)"
        config = state["config"]
        scored = [row for row in state.get("history") or [] if row.get("test_acc") is not None]
        if config["train"].get("bn_recalibrate") and scored:
            note = (f"the checkpoint's BatchNorm statistics are scored as saved, while the trainer's score of "
                    f"epoch {scored[-1]['epoch']} ({scored[-1]['test_acc']:.2f}%) re-estimated them after a "
                    "projection (train.bn_recalibrate): the two may differ")
    if config is None and run_dir is not None and (run_dir / "config.yaml").is_file():
        with warnings.catch_warnings():  # its training settings' warnings are not for a scoring
            warnings.simplefilter("ignore", UserWarning)
            config = load_recipe(run_dir)
    recipe: dict[str, Any] = {}
    if config:  # the run's own: its model's name, data and seed (the generated set's images)
        recipe = {"model": {"name": config["model"]["name"]}, "data": dict(config["data"]), "seed": config["seed"]}
    elif arch.get("trained_on"):  # a compact model away from its run, which records them itself
        recipe = {"model": {"name": arch["model"]}, "data": dict(arch["trained_on"]["data"]),
                  "seed": arch["trained_on"]["seed"]}
    own = recipe.get("data", {}).get("name")
    if any(key.startswith("data.name=") and key.split("=", 1)[1].strip() != own for key in overrides):
        recipe.pop("data", None)  # another data set: none of the run's data settings (its folder, its sizes)
    for key in overrides:
        apply_override(recipe, key)
    return Source(model, resolve(recipe, f"--set {' '.join(overrides)}" if overrides else str(file)), arch, what,
                  bool(config or arch.get("trained_on")), note)


def scoring_data(cfg: dict[str, Any], arch: dict[str, Any], device: torch.device, data_dir: str | None = None,
                 overrides: list[str] = ()) -> Any:
    """The test split `resolve_source`'s recipe and arch name (``data.build_test_data``): from `data_dir`
    where given; a data.dir recorded on another machine (moved, or a GPU machine's /tmp) falls back to the
    default places with a note; an image folder at the size the model was trained at, labelled by its class
    names; the images normalized by the model's own statistics where its file records them (CIFAR's
    depend on the training images used)."""
    from .data import build_test_data

    data_cfg = cfg["data"]
    recorded = data_cfg["dir"]
    if data_dir:
        data_cfg["dir"] = data_dir
    elif recorded and not Path(recorded).exists() and not any(k.startswith("data.dir=") for k in overrides):
        print(f"note: the run's data.dir {recorded} is not on this machine: looking elsewhere (give --data-dir)")
        data_cfg["dir"] = None
    if data_cfg["name"] == "folder" and data_cfg["image_size"] is None and arch.get("input_size"):
        data_cfg["image_size"] = arch["input_size"][-1]
    return build_test_data(data_cfg, device=device, seed=cfg["seed"], classes=arch.get("classes"),
                           normalize=arch.get("normalize"))


def predicted_classes(model: nn.Module, data: Any, what: str) -> int:
    """How many classes `model` predicts (more than the data's: a head kept from 1000-class weights);
    refuses data with more classes than that. (An image folder's labels come from the model's own class
    names where it has them: `lrtrain.data.build_test_data`.)"""
    from .metrics import _inference

    with _inference(model, data.input_size) as x:
        outputs = model(x).shape[-1]
    if outputs < data.num_classes:
        raise ValueError(f"{what} predicts {outputs} classes; {data.description} has {data.num_classes} "
                         "(point --set data.name / data.dir at the data set it was trained on)")
    return outputs


__all__ = ["Source", "evaluate", "predicted_classes", "resolve_source", "score_sums", "scoring_data", "shown_batches",
           "summarize"]
