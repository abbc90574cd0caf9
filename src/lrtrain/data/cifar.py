"""CIFAR-10/100 from the python-pickle batches, held as uint8 tensors on the training device.

The whole training set fits in GPU memory as uint8 (CIFAR-10: 150 MB), so a batch is one gather, and
random-crop-with-padding + horizontal flip run on the device for the whole batch at once: no worker
processes and no host-to-device copies during training. `DeviceLoader` does this for any uint8 image
tensor (the generated sample set uses it too).

The pickles are read directly (``pickle.load(f, encoding="bytes")``): torchvision's CIFAR10 class checks
md5 sums that a re-exported copy of the data does not match.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DATA_ENV = "LRTRAIN_DATA"
# The project keeps shared data beside the repository: <repo>/../shared/data.
_PROJECT_ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class _Layout:
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes
    title: str
    classes: int
    meta_file: str         # the class names, where the copy has them
    names_key: bytes


LAYOUTS = {
    "cifar10": _Layout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                       b"labels", "CIFAR-10", 10, "batches.meta", b"label_names"),
    "cifar100": _Layout("cifar-100-python", ("train",), "test", b"fine_labels", "CIFAR-100", 100,
                        "meta", b"fine_label_names"),
}


def search_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """Where data sets are looked for: ``data_dir`` if given, else $LRTRAIN_DATA if set, else
    ``../shared/data`` relative to the working directory and to the project."""
    if data_dir is not None:
        return [Path(data_dir)]
    if os.environ.get(DATA_ENV):
        return [Path(os.environ[DATA_ENV])]
    candidates = [Path.cwd() / "../shared/data", _PROJECT_ROOT / "../shared/data"]
    return list(dict.fromkeys(p.resolve() for p in candidates))


def find_cifar(name: str, data_dir: str | Path | None = None) -> Path:
    """The folder holding the ``name`` ("cifar10" | "cifar100") pickles; FileNotFoundError says where it looked.

    Each search directory may be the pickle folder itself or contain it.
    """
    layout = LAYOUTS[name]
    looked = []
    files = (*layout.train_files, layout.test_file)
    for root in search_dirs(data_dir):
        for folder in (root / layout.folder, root):
            looked.append(str(folder))
            missing = [f for f in files if not (folder / f).is_file()]
            if not missing:
                return folder
            if len(missing) < len(files):  # the right folder, with files lost: say which
                raise FileNotFoundError(f"{layout.title} in {folder} is incomplete: no {', '.join(missing)}")
    raise FileNotFoundError(
        f"{layout.title} not found: looked for {{{','.join(layout.train_files)},{layout.test_file}}} in "
        f"{', '.join(dict.fromkeys(looked))} (set data.dir, --data-dir or ${DATA_ENV} to the folder holding "
        f"{layout.folder})"
    )


def _entry(batch: dict, key: bytes):
    """``batch[key]``: the original pickles' keys are bytes, a copy re-saved from Python 3 has them as text."""
    return batch[key] if key in batch else batch[key.decode()]


def _read_batch(path: Path, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images = np.asarray(_entry(batch, b"data"), dtype=np.uint8)
        labels = np.asarray(_entry(batch, layout.label_key), dtype=np.int64)
    except Exception as err:  # any unpickling failure means the same thing: a damaged file
        raise ValueError(f"corrupt CIFAR file {path}: {type(err).__name__}: {err}") from None
    if images.ndim != 2 or images.shape[1] != 3 * 32 * 32 or len(labels) != len(images):
        raise ValueError(
            f"corrupt CIFAR file {path}: expected N×3072 pixels and N labels, "
            f"got {images.shape} pixels and {len(labels)} labels"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= layout.classes):
        raise ValueError(f"corrupt CIFAR file {path}: labels outside 0..{layout.classes - 1}")
    return images, labels


def read_cifar(name: str, folder: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train images, train labels, test images, test labels): uint8 N×3×32×32 and int64, on the CPU."""
    layout = LAYOUTS[name]

    def load(files):
        parts = [_read_batch(folder / f, layout) for f in files]
        images = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
        return torch.from_numpy(images), torch.from_numpy(np.concatenate([p[1] for p in parts]))

    return (*load(layout.train_files), *load([layout.test_file]))


def channel_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of uint8 N×C×H×W images, in the 0–255 scale (float32, shape C).

    Computed exactly from per-channel histograms of the 256 values: fast, no float copy of the set.
    """
    values = torch.arange(256, dtype=torch.float64)
    counts = torch.stack([torch.bincount(images[:, c].flatten(), minlength=256)
                          for c in range(images.shape[1])]).double()
    n = counts.sum(1)
    mean = counts @ values / n
    var = counts @ values.square() / n - mean.square()
    return mean.float(), var.clamp_min(0).sqrt().float()


def normalize(images: Tensor, mean: Tensor, std: Tensor, channels_last: bool = False) -> Tensor:
    """uint8 N×C×H×W → float32 ``(x - mean) / std`` (0–255 scale statistics of shape C)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device, memory_format=fmt)
    out.copy_(images)
    return out.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))


def crop_flip(images: Tensor, offsets: Tensor, flips: Tensor, padding: int) -> Tensor:
    """Random crop with zero padding, then horizontal flip, of a batch in one gather.

    ``offsets`` (B×2, in 0..2·padding) are the crop's top-left corners in the padded image, ``flips`` (B,)
    says which crops to mirror; the result has the input's size, like torchvision's
    ``RandomCrop(size, padding)`` followed by ``RandomHorizontalFlip``.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    arange_h = torch.arange(h, device=images.device)
    arange_w = torch.arange(w, device=images.device)
    rows = offsets[:, :1] + arange_h                                   # B×H
    cols = offsets[:, 1:] + torch.where(flips[:, None], w - 1 - arange_w, arange_w)   # B×W
    index = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).view(b, 1, h * w)
    return padded.flatten(2).gather(2, index.expand(b, c, h * w)).view(b, c, h, w)


class DeviceLoader:
    """Batches of uint8 images held on one device, shuffled, augmented and normalized there.

    An epoch's order and augmentation are drawn at its start from a generator seeded by (``seed``,
    epoch), so ``batches(epoch, start=k)`` reproduces batches k, k+1, ... of that epoch exactly (what
    resuming from a mid-epoch checkpoint needs). With ``world_size`` > 1 each rank gets an equal,
    disjoint share of every epoch.

    >>> images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    >>> loader = DeviceLoader(images, torch.arange(10), batch_size=4, mean=torch.zeros(3),
    ...                       std=torch.ones(3), shuffle=True, augment=True)
    >>> [tuple(x.shape) for x, y in loader.batches(epoch=0)]
    [(4, 3, 8, 8), (4, 3, 8, 8)]
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, *, mean: Tensor, std: Tensor,
                 shuffle: bool, augment: bool, padding: int = 4, drop_last: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, channels_last: bool = False):
        self.images, self.labels = images, labels.to(images.device)
        self.mean, self.std = mean.to(images.device), std.to(images.device)
        self.batch_size, self.shuffle, self.augment, self.padding = batch_size, shuffle, augment, padding
        self.seed, self.rank, self.world_size, self.channels_last = seed, rank, world_size, channels_last
        # Training ranks must take the same number of steps; evaluation shares every image out.
        self.per_rank = len(images) // world_size if shuffle else len(range(rank, len(images), world_size))
        full, rest = divmod(self.per_rank, batch_size)
        self.steps = full if drop_last or rest == 0 else full + 1
        # an evaluation share may be empty (fewer test images than processes): its sums are zero
        if self.steps == 0 and (shuffle or not len(images)):
            raise ValueError(f"{len(images)} images give no batch of {batch_size} per process "
                             f"(world size {world_size}); lower data.batch_size")

    def __len__(self) -> int:
        return self.steps

    @property
    def num_images(self) -> int:
        """Images in the split (every process's share)."""
        return len(self.images)

    def _plan(self, epoch: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        n, device = len(self.images), self.images.device
        if not self.shuffle:
            return torch.arange(self.rank, n, self.world_size, device=device), None, None
        g = torch.Generator(device=device)
        g.manual_seed(self.seed * 1_000_003 + epoch)
        mine = slice(self.rank, self.per_rank * self.world_size, self.world_size)
        order = torch.randperm(n, generator=g, device=device)[mine]
        if not self.augment:
            return order, None, None
        # drawn for every position of the epoch and sliced like the order: each process crops its own
        # images differently, and an image's crop does not depend on the number of processes
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=g, device=device)[mine]
        flips = torch.randint(0, 2, (n,), generator=g, device=device).bool()[mine]
        return order, offsets, flips

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """(normalized float images, labels) for the steps ``start``.. of ``epoch``, on the device."""
        order, offsets, flips = self._plan(epoch)
        for step in range(start, self.steps):
            part = slice(step * self.batch_size, (step + 1) * self.batch_size)
            index = order[part]
            images = self.images[index]
            if offsets is not None:
                images = crop_flip(images, offsets[part], flips[part], self.padding)
            yield normalize(images, self.mean, self.std, self.channels_last), self.labels[index]


def cifar_class_names(name: str, folder: Path) -> list[str] | None:
    """The class names by label from the copy's meta file; None where it has none or an unreadable one
    (the names are a convenience: the images and labels do not need them)."""
    layout = LAYOUTS[name]
    try:
        with open(folder / layout.meta_file, "rb") as f:
            names = [n.decode() if isinstance(n, bytes) else str(n)
                     for n in _entry(pickle.load(f, encoding="bytes"), layout.names_key)]
    except Exception:
        return None
    return names if len(names) == layout.classes else None
