"""Training and test batches for the trainer: CIFAR, ImageNet-style folders, or the generated sample set.

`build_data` turns a recipe's ``data`` section into two loaders with one interface: ``len(loader)``
steps per epoch and ``loader.batches(epoch, start)`` yielding (normalized float images, labels) already
on the training device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
from torch import Tensor

from .cifar import DATA_ENV, LAYOUTS, DeviceLoader, channel_stats, cifar_class_names, find_cifar, read_cifar
from .folder import IMAGENET_MEAN, IMAGENET_STD, FolderLoader, class_folders, eval_resize, find_folder
from .sample import make_sample


class Loader(Protocol):
    num_images: int  # in the split, every process's share

    def __len__(self) -> int: ...

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]: ...


@dataclass
class Data:
    """The loaders of one data set and what a model needs to know about it."""

    train: Loader
    test: Loader
    num_classes: int
    input_size: tuple[int, int, int, int]  # (1, channels, height, width) for FLOPs counting
    description: str                        # e.g. "CIFAR-10 from /path (50000 train, 10000 test)"
    classes: list[str] | None = None        # class names by label index, where the data names them
    normalize: dict[str, list[float]] | None = None  # the input the model sees: (x - mean) / std, x in 0-1
    resize: int | None = None  # an evaluation image's shorter side before its centre crop (image folders)


# the fields of `Data` that a trained model's files (compact.pt, checkpoints, summary.json) record
MODEL_FACTS = ("classes", "normalize", "resize")


def model_facts(data: Data) -> dict[str, Any]:
    """What a trained model's files record of `data` (`MODEL_FACTS`), where the data say it."""
    return {key: getattr(data, key) for key in MODEL_FACTS if getattr(data, key, None)}


def folder_facts(image_size: int) -> dict[str, Any]:
    """The normalization and evaluation resize of every image-folder model (ImageNet's statistics): for
    files that do not record them, with no need of the folder itself."""
    return {"normalize": normalization(IMAGENET_MEAN, IMAGENET_STD), "resize": eval_resize(image_size)}


def normalization(mean: Tensor, std: Tensor) -> dict[str, list[float]]:
    """``{"mean", "std"}`` per channel, in the 0–1 pixel scale (torchvision's), of 0–255 scale statistics."""
    return {"mean": (mean.double() / 255).tolist(), "std": (std.double() / 255).tolist()}


def normalization_stats(normalize: dict[str, list[float]]) -> tuple[Tensor, Tensor]:
    """The 0–255 scale float32 (mean, std) tensors of a `normalization`; ValueError on a malformed one."""
    try:
        mean, std = (torch.tensor(normalize[key], dtype=torch.float64) * 255 for key in ("mean", "std"))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"input normalization {normalize!r} is not {{'mean': [...], 'std': [...]}}: {err}") from None
    if mean.shape != (3,) or std.shape != (3,) or not bool((std > 0).all()):
        raise ValueError(f"input normalization {normalize!r}: needs 3 means and 3 positive stds")
    # pixels scaled to 0-1 have their mean in [0, 1] and std at most 0.5 (1 allowed): larger is the 0-255 scale
    if not bool(((mean >= 0) & (mean <= 255)).all() & (std <= 255).all()):
        raise ValueError(f"input normalization {normalize!r}: means and stds are of pixels scaled to 0-1 (a mean "
                         f"in [0, 1], a std at most 1); for 0-255 figures divide them by 255")
    return mean.float(), std.float()


def _tensor_data(tensors: tuple[Tensor, Tensor, Tensor, Tensor], classes: int, source: str,
                 names: list[str] | None, cfg: dict[str, Any], batch_size: int, *, device: torch.device,
                 normalize: dict[str, list[float]] | None = None, train: bool = True, **placement: Any) -> Data:
    """``train=False``: no training loader (scoring only; the images still give the statistics)."""
    images, labels, test_images, test_labels = tensors
    mean, std = normalization_stats(normalize) if normalize else channel_stats(images)
    common = dict(mean=mean, std=std, **placement)
    loader = DeviceLoader(images.to(device), labels, batch_size, shuffle=True, augment=cfg["augment"],
                          padding=cfg["padding"], drop_last=cfg["drop_last"], **common) if train else None
    test = DeviceLoader(test_images.to(device), test_labels, cfg["eval_batch_size"], shuffle=False, augment=False,
                        drop_last=False, **common)
    size = images.shape[-1]
    description = f"{source} ({len(images)} train, {len(test_images)} test)"
    return Data(loader, test, classes, (1, 3, size, size), description, names,  # type: ignore[arg-type]
                normalization(mean, std))


def _folder_root(cfg: dict[str, Any]) -> Path:
    root = cfg["dir"] or os.environ.get(DATA_ENV)
    if root is None:
        raise FileNotFoundError(
            f"data.name folder needs data.dir (or ${DATA_ENV}): the folder holding train/ and val/")
    return Path(root)


def _folder_common(cfg: dict[str, Any], normalize: dict[str, list[float]] | None = None,
                   **placement: Any) -> dict[str, Any]:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    mean, std = normalization_stats(normalize) if normalize else (IMAGENET_MEAN, IMAGENET_STD)
    # more decoding processes than cores only compete for them (torch warns of it at every epoch)
    return dict(image_size=cfg["image_size"] or 224, workers=min(cfg["workers"], cpus), drop_last=cfg["drop_last"],
                mean=mean, std=std, **placement)


def _val_loader(val_dir: Path, cfg: dict[str, Any], classes: list[str] | None,
                common: dict[str, Any]) -> FolderLoader:
    return FolderLoader(val_dir, False, batch_size=cfg["eval_batch_size"], augment=False, classes=classes,
                        limit=cfg["test_size"], **common)


def _folder_data(cfg: dict[str, Any], batch_size: int, normalize: dict[str, list[float]] | None,
                 **placement: Any) -> Data:
    root = _folder_root(cfg)
    train_dir, val_dir = find_folder(root)
    common = _folder_common(cfg, normalize, **placement)
    train = FolderLoader(train_dir, True, batch_size=batch_size, augment=cfg["augment"], limit=cfg["train_size"],
                         **common)
    test = _val_loader(val_dir, cfg, train.classes, common)
    size = common["image_size"]
    return Data(train, test, len(train.classes), (1, 3, size, size),
                f"image folder {root} ({len(train.dataset)} train, {len(test.dataset)} val)", train.classes,
                normalization(common["mean"], common["std"]), eval_resize(size))


def build_test_data(cfg: dict[str, Any], *, device: torch.device, seed: int = 0,
                    classes: list[str] | None = None, normalize: dict[str, list[float]] | None = None) -> Data:
    """`build_data` for scoring only: an image folder needs just its val/ split, labelled by ``classes``
    (a model's own) or else by the class folders of train/ (or of val/ where there is no train/); its
    ``train`` is None. Other data sets are read whole (CIFAR's normalization comes from its training
    images, unless ``normalize`` gives the model's own), with no training loader either."""
    if cfg["name"] != "folder":
        return _tensor_data(*_tensors(cfg, seed), cfg, cfg["batch_size"], device=device, seed=seed,
                            normalize=normalize, train=False)
    root = _folder_root(cfg)
    val_dir, train_dir = root / "val", root / "train"
    if not val_dir.is_dir():
        raise FileNotFoundError(f"image folder not found (no val/ in {root}): scoring expects {val_dir}/<class>/*.jpg")
    if classes is None and train_dir.is_dir():
        classes = class_folders(train_dir)
    common = _folder_common(cfg, normalize, device=device, seed=seed)
    test = _val_loader(val_dir, cfg, classes, common)
    size = common["image_size"]
    return Data(None, test, len(test.classes), (1, 3, size, size),  # type: ignore[arg-type]
                f"image folder {root} ({len(test.dataset)} val)", test.classes,
                normalization(common["mean"], common["std"]), eval_resize(size))


def build_data(cfg: dict[str, Any], *, device: torch.device, seed: int = 0, rank: int = 0, world_size: int = 1,
               channels_last: bool = False, normalize: dict[str, list[float]] | None = None) -> Data:
    """Loaders for a recipe's resolved ``data`` section, sharded for ``rank`` of ``world_size``.

    ``data.batch_size`` is the global batch: each process takes ``batch_size / world_size``. The images
    are normalized by ``normalize`` (a `normalization`: a trained model's own) where given, else by the
    training images' channel statistics (CIFAR, the generated set) or ImageNet's (image folders): the
    result's ``normalize`` says which.
    A missing data set raises FileNotFoundError naming the places searched; a damaged one ValueError.
    """
    if cfg["batch_size"] % world_size:
        raise ValueError(f"data.batch_size {cfg['batch_size']} is not divisible by the {world_size} processes")
    placement = dict(device=device, seed=seed, rank=rank, world_size=world_size, channels_last=channels_last)
    batch_size = cfg["batch_size"] // world_size
    name = cfg["name"]
    if name == "folder":
        return _folder_data(cfg, batch_size, normalize, **placement)
    return _tensor_data(*_tensors(cfg, seed), cfg, batch_size, normalize=normalize, **placement)


def _tensors(cfg: dict[str, Any], seed: int) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], int, str,
                                                      list[str] | None]:
    """The images and labels of a data set held in memory (CIFAR, the generated set), its class count,
    where they come from and the class names where it has them."""
    name = cfg["name"]
    if name == "sample":
        size, classes = cfg["image_size"] or 32, cfg["num_classes"]
        tensors = make_sample(cfg["train_size"] or 5000, cfg["test_size"] or 1000, size, classes, seed)
        source, names = f"generated sample set ({size}×{size}, {classes} classes)", None
    else:
        folder = find_cifar(name, cfg["dir"])
        images, labels, test_images, test_labels = read_cifar(name, folder)
        train_n, test_n = cfg["train_size"], cfg["test_size"]
        for key, asked, there in (("train_size", train_n, len(images)), ("test_size", test_n, len(test_images))):
            if asked is not None and asked > there:
                raise ValueError(f"data.{key} is {asked}, but {LAYOUTS[name].title} has {there} such images")
        tensors = (images[:train_n], labels[:train_n], test_images[:test_n], test_labels[:test_n])
        classes, source = LAYOUTS[name].classes, f"{LAYOUTS[name].title} from {folder}"
        names = cifar_class_names(name, folder)
    return tensors, classes, source, names


__all__ = ["MODEL_FACTS", "Data", "DeviceLoader", "FolderLoader", "Loader", "build_data", "build_test_data",
           "find_cifar", "folder_facts", "make_sample", "model_facts", "normalization", "normalization_stats"]
