"""Classify image files with a trained model: `read_images`, `predict`, and ``lrtrain predict``.

An image is prepared as the model's test images were: its shorter side resized (to the size the run's
evaluation used before its centre crop, where the model records one: image folders; else to the input
size) and centre-cropped to the input size, then normalized by the model's recorded statistics.

    >>> import torch, lrtrain as lr
    >>> images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    >>> probs, labels = predict(lr.models.create("resnet20").eval(), images,
    ...                         {"mean": [0.5] * 3, "std": [0.25] * 3}, top=3)
    >>> probs.shape, labels.shape, bool((probs.sum(1) <= 1 + 1e-6).all())
    (torch.Size([2, 3]), torch.Size([2, 3]), True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from . import models
from .metrics import eval_mode, model_device


def read_images(paths: str | Path | Sequence[str | Path], size: int, resize: int | None = None) -> Tensor:
    """The images at `paths` (one path, or several) as one uint8 N×3×size×size tensor: RGB (grey, palette
    and alpha images converted), the shorter side resized to `resize` (default `size`), centre-cropped. A
    missing file raises FileNotFoundError, a folder or a file that cannot be decoded ValueError, naming it."""
    from .data.folder import eval_transform, read_rgb

    if isinstance(paths, (str, Path)):  # one file, not the characters of its name
        paths = [paths]
    if not paths:
        raise ValueError("read_images: no image paths given")
    if resize is not None and resize < size:  # the centre crop would pad the image with black
        raise ValueError(f"read_images: resize ({resize}) must be at least the crop size ({size})")
    transform = eval_transform(size, resize or size)
    images = []
    for path in map(Path, paths):
        if path.is_dir():
            raise ValueError(f"{path} is a folder: give image files (e.g. {path / '*.jpg'})")
        if not path.is_file():
            raise FileNotFoundError(f"no such image file: {path}")
        images.append(transform(read_rgb(path)))
    return torch.stack(images)


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, normalize: dict[str, list[float]] | None, top: int = 5,
            batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """The `top` class probabilities (softmax) and labels of each of `images` (uint8 N×3×H×W, RGB),
    normalized per channel by ``normalize`` (a trained model's record; None: the pixels scaled to 0–1
    only), as two N×k CPU tensors, k = min(top, classes), the likeliest first."""
    from .export import Normalized

    if top < 1 or batch_size < 1:
        raise ValueError(f"predict needs top >= 1 and batch_size >= 1, got top={top}, batch_size={batch_size}")
    if images.dtype != torch.uint8:  # 0-1 floats would be divided by 255 once more
        raise TypeError(f"predict takes uint8 images (0-255, as read_images gives), got {images.dtype}")
    # normalized in float32, then given to the model in its own dtype (one rounding, after normalizing)
    net = Normalized(model, {"mean": [0.0] * 3, "std": [1.0] * 3} if normalize is None else normalize)
    device = model_device(model)
    with eval_mode(model):
        probs = torch.cat([net(batch.to(device).float() / 255).float().softmax(1).cpu()
                           for batch in images.split(batch_size)])
    best = probs.topk(min(top, probs.shape[1]), dim=1)
    return best.values, best.indices


def describe(paths: Sequence[str | Path], probs: Tensor, labels: Tensor, classes: list[str] | None) -> list[str]:
    """One line per image: ``path: name 91.2%, name 4.1%, ...`` (``class N`` where the model has no names)."""
    def name(label: int) -> str:
        return classes[label] if classes and label < len(classes) else f"class {label}"

    return [f"{path}: " + ", ".join(f"{name(int(k))} {100 * float(p):.1f}%" for p, k in zip(row_p, row_k))
            for path, row_p, row_k in zip(paths, probs, labels)]


def prepared(path: str | Path, data_dir: str | None = None) -> tuple[nn.Module, dict[str, Any], int, str]:
    """The trained model `path` names (a run directory: its compact.pt, else its newest checkpoint; a compact
    model file; a checkpoint), what it records of its data (`data.MODEL_FACTS`), its input side and a phrase
    naming it. A file that records no input normalization (written by an older lrtrain) takes an image-folder
    model's (ImageNet's), else its run's data's (found in `data_dir`, else the run's data.dir, else the
    default places), with a note; where there is no run's recipe to say what data, or the data cannot be
    found, it is a ValueError."""
    from .inspection import _facts, scored_file, trained_with_arch

    file = scored_file(path)
    model, arch = trained_with_arch(file)
    facts = _facts(arch)
    side = (arch.get("input_size") or models.default_input_size(arch["model"]))[-1]
    if not facts.get("normalize"):
        facts = {**derived_facts(path, side, data_dir), **facts}
    return model, facts, side, str(file)


def derived_facts(path: str | Path, side: int, data_dir: str | None = None) -> dict[str, Any]:
    """What a model file that records no input normalization (written by an older lrtrain) gets instead, as
    `prepared` says; `side`: its input size."""
    from .data import folder_facts, model_facts
    from .evaluation import resolve_source, scoring_data
    from .inspection import scored_file

    missing = f"{scored_file(path)} does not record its input normalization (written by an older lrtrain)"
    try:
        _, cfg, arch, _, from_run, _ = resolve_source(path, [])
    except ValueError as err:  # its run's config.yaml cannot be read by this version
        raise ValueError(f"{missing}, and its run's recipe cannot tell it: {err}") from None
    if not from_run:  # never the defaults' data set: a guess would give confident wrong answers
        raise ValueError(f"{missing}, and no config.yaml of its run beside it says what it was trained on: "
                         "use it from its run directory")
    if cfg["data"]["name"] == "folder":  # the same for every folder: no need of the images
        print(f"note: {missing}: an image-folder model's, ImageNet's statistics")
        return folder_facts(side)
    try:
        data = scoring_data(cfg, arch, torch.device("cpu"), data_dir)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"{missing}, and its run's data cannot give it: {err}") from None
    print(f"note: {missing}: taken from its run's data, {data.description}")
    return model_facts(data)


__all__ = ["derived_facts", "describe", "predict", "prepared", "read_images"]
