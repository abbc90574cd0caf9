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

from .cifar import DATA_ENV, LAYOUTS, DeviceLoader, channel_stats, find_cifar, read_cifar
from .folder import FolderLoader, find_folder
from .sample import make_sample


class Loader(Protocol):
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


def _tensor_data(images: Tensor, labels: Tensor, test_images: Tensor, test_labels: Tensor, cfg: dict[str, Any],
                 *, device: torch.device, seed: int, rank: int, world_size: int,
                 channels_last: bool) -> tuple[DeviceLoader, DeviceLoader]:
    mean, std = channel_stats(images)
    common = dict(mean=mean, std=std, seed=seed, rank=rank, world_size=world_size, channels_last=channels_last)
    train = DeviceLoader(images.to(device), labels, cfg["batch_size"] // world_size, shuffle=True,
                         augment=cfg["augment"], padding=cfg["padding"], drop_last=cfg["drop_last"], **common)
    test = DeviceLoader(test_images.to(device), test_labels, cfg["eval_batch_size"], shuffle=False,
                        augment=False, drop_last=False, **common)
    return train, test


def build_data(cfg: dict[str, Any], *, device: torch.device, seed: int = 0, rank: int = 0, world_size: int = 1,
               channels_last: bool = False) -> Data:
    """Loaders for a recipe's resolved ``data`` section, sharded for ``rank`` of ``world_size``.

    ``data.batch_size`` is the global batch: each process takes ``batch_size / world_size``.
    A missing data set raises FileNotFoundError naming the places searched; a damaged one ValueError.
    """
    if cfg["batch_size"] % world_size:
        raise ValueError(f"data.batch_size {cfg['batch_size']} is not divisible by the {world_size} processes")
    name = cfg["name"]
    placement = dict(device=device, seed=seed, rank=rank, world_size=world_size, channels_last=channels_last)
    if name == "folder":
        root = cfg["dir"] or os.environ.get(DATA_ENV)
        if root is None:
            raise FileNotFoundError(f"data.name folder needs data.dir (or ${DATA_ENV}): the folder holding train/ and val/")
        train_dir, val_dir = find_folder(Path(root))
        size = cfg["image_size"] or 224
        common = dict(image_size=size, workers=cfg["workers"], drop_last=cfg["drop_last"], **placement)
        train = FolderLoader(train_dir, True, batch_size=cfg["batch_size"] // world_size, augment=cfg["augment"], **common)
        test = FolderLoader(val_dir, False, batch_size=cfg["eval_batch_size"], augment=False, **common)
        return Data(train, test, len(train.classes), (1, 3, size, size),
                    f"image folder {root} ({len(train.dataset)} train, {len(test.dataset)} val)")
    if name == "sample":
        size = cfg["image_size"] or 32
        tensors = make_sample(cfg["train_size"] or 5000, cfg["test_size"] or 1000, size, cfg["num_classes"], seed)
        classes, source = cfg["num_classes"], f"generated sample set ({size}×{size}, {cfg['num_classes']} classes)"
    else:
        folder = find_cifar(name, cfg["dir"])
        images, labels, test_images, test_labels = read_cifar(name, folder)
        train_n, test_n = cfg["train_size"], cfg["test_size"]
        tensors = (images[:train_n], labels[:train_n], test_images[:test_n], test_labels[:test_n])
        classes, source = (10 if name == "cifar10" else 100), f"{LAYOUTS[name].title} from {folder}"
        size = 32
    train, test = _tensor_data(*tensors, cfg, **placement)
    description = f"{source} ({len(tensors[0])} train, {len(tensors[2])} test)"
    return Data(train, test, classes, (1, 3, size, size), description)


__all__ = ["Data", "DeviceLoader", "FolderLoader", "Loader", "build_data", "find_cifar", "make_sample"]
