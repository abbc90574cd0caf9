"""ImageNet-style image folders (``root/train/<class>/*.jpg``, ``root/val/<class>/*.jpg``).

Worker processes decode and crop (RandomResizedCrop + flip for training; resize to size/0.875 and
centre crop for evaluation) and hand over uint8 tensors; conversion to float and normalization happen
on the training device, which moves a quarter of the bytes over PCIe.
"""

from __future__ import annotations

import os
import unicodedata
import warnings
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .cifar import normalize

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]) * 255
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]) * 255
EVAL_CROP = 0.875  # evaluation: the shorter side resized to size / 0.875, then the centre size × size


def eval_resize(image_size: int) -> int:
    """The shorter side an image is resized to before the evaluation's centre crop of `image_size`."""
    return round(image_size / EVAL_CROP)


def eval_transform(image_size: int, resize: int | None = None):
    """Resize the shorter side to `resize` (default `eval_resize`), centre-crop `image_size`, uint8 C×H×W."""
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(resize or eval_resize(image_size)),
                               transforms.CenterCrop(image_size), transforms.PILToTensor()])


class _ShardSampler(Sampler[tuple[int, int]]):
    """This rank's indices of an epoch, in an order drawn from (seed, epoch), from a given position on,
    each with the seed of its augmentation (a function of seed, epoch and index only)."""

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int, world_size: int):
        self.n, self.shuffle, self.seed, self.rank, self.world_size = n, shuffle, seed, rank, world_size
        self.epoch, self.start = 0, 0
        self.per_rank = n // world_size if shuffle else len(range(rank, n, world_size))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch_seed = self.seed * 1_000_003 + self.epoch
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(epoch_seed))
            order = order[: self.per_rank * self.world_size][self.rank :: self.world_size]
        else:
            order = torch.arange(self.rank, self.n, self.world_size)
        return ((i, (epoch_seed * 1_000_000_007 + i) % 2**63) for i in order[self.start :].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start


def _visible(name: str) -> bool:
    """Not a hidden entry: ``.ipynb_checkpoints/``, macOS's ``._x.jpg`` and ``.DS_Store`` are no data."""
    return not name.startswith(".")


def _is_image(path: str) -> bool:
    """A visible file of an image format: torchvision's list (JPEG, PNG, BMP, TIFF, WebP, PPM/PGM) and GIF,
    not every extension PIL registers (its HDF5, FITS or MPEG plugins cannot decode what lies beside
    images in practice, and a stray file would then stop a run)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    return _visible(Path(path).name) and has_file_allowed_extension(path, (*IMG_EXTENSIONS, ".gif"))


def read_rgb(path: str | Path, advice: str = ""):
    """The image at `path` as a PIL image in RGB (grey, palette and alpha images converted). One that cannot
    be decoded raises ValueError naming the file and why (PIL's own errors, e.g. "image file is truncated",
    do not name it), then `advice`, in a worker process as in the main one."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in ("I", "F") or image.mode.startswith("I;16"):
                image = _as_8_bit(image)
            return image.convert("RGB")
    except UnidentifiedImageError:
        reason = "not an image format PIL can decode"
    except Exception as err:  # truncated, damaged, unreadable: PIL's or the OS's own words
        reason = " ".join(str(err).split())
    raise ValueError(f"cannot read image {path}: {reason}{advice}") from None


def _as_8_bit(image):
    """A grey image of more than 8 bits ("I;16*", "I", "F") scaled to 8 ("L"): PIL's RGB conversion clips
    such values at 255 (a 16-bit image came out nearly white). The scale follows the mode, not the picture,
    so that a dark image stays dark: integers (a 16-bit PNG, PGM or TIFF, which PIL opens as "I;16" or
    "I") within 0-65535 are divided by 257; floats within 0-1 multiplied by 255, within 0-255 kept. Only
    values outside those ranges are stretched to 0-255 (their meaning unknown)."""
    import numpy as np
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode == "F" and 0.0 <= low and high <= 1.0:
        values = values * 255.0
    elif image.mode == "F" and 0.0 <= low and high <= 255.0:
        pass
    elif image.mode != "F" and 0.0 <= low and high <= 65535.0:
        values = values / 257.0
    else:
        values = (values - low) * (255.0 / max(high - low, 1e-12))
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def _few(names: list[str], most: int = 5) -> str:
    return ", ".join(names[:most]) + (" ..." if len(names) > most else "")


def class_folders(root: Path) -> list[str]:
    """The class names of ``root/<class>/``: its folders, sorted, hidden ones left out."""
    return sorted(e.name for e in root.iterdir() if e.is_dir() and _visible(e.name))


def _scan(root: Path, labels: dict[str, int]) -> tuple[list[tuple[str, int]], dict[str, list[str]]]:
    """The (path, label) of every image under ``root/<class>/``, in torchvision's order (folders, then
    files, sorted), and what was left out, by reason. Links are followed, as torchvision does, but a folder
    is walked once: a link to a folder already in the data set (above it: a loop; a class folder: its
    images under another label; a second link to one folder: its images twice) or to a folder holding the
    data set is left out. A link to nothing is no image. One directory listing a folder, and a system call
    more only for links (ImageNet's 1.3 M files cost no call each)."""
    samples: list[tuple[str, int]] = []
    twice = "folder(s) left out, reached a second time through a link"
    above = "folder(s) left out, links to a folder holding the data set"
    left_out: dict[str, list[str]] = {"file(s) left out, not of an image format": [],
                                      "file(s) left out, links to nothing": [], twice: [], above: []}
    top = os.path.realpath(root)
    classes = {os.path.realpath(root / name) for name in labels}
    for name in sorted(labels):
        walked, seen, pending = [], classes | {top}, [str(root / name)]
        while pending:
            folder = pending.pop()
            entries = sorted((e for e in os.scandir(folder) if _visible(e.name)), key=lambda e: e.name)
            files = []
            for entry in entries:
                if not entry.is_dir():  # a file, or a link to nothing or to a file
                    files.append(entry)
                    continue
                real = os.path.realpath(entry.path) if entry.is_symlink() else None
                if real is not None and (top == real or top.startswith(real.rstrip(os.sep) + os.sep)):
                    left_out[above].append(entry.path)
                elif real is not None and real in seen:
                    left_out[twice].append(entry.path)
                else:
                    seen.add(real or os.path.realpath(entry.path))
                    pending.append(entry.path)
            walked.append((folder, files))
        for folder, files in sorted(walked, key=lambda w: w[0]):
            for entry in files:
                if not _is_image(entry.path):
                    left_out["file(s) left out, not of an image format"].append(entry.path)
                elif entry.is_symlink() and not os.path.exists(entry.path):
                    left_out["file(s) left out, links to nothing"].append(entry.path)
                else:
                    samples.append((entry.path, labels[name]))
    return samples, left_out


class _ImageFiles(Dataset):
    """The images of ``root/<class>/``, as torchvision's ImageFolder finds them (sorted class names; GIF
    too), without hidden folders and files, and labelled by ``classes`` when given (the training
    set's: a validation folder may lack some classes, never hold one the list has not). Module-level, so
    that worker processes started by spawn can unpickle it."""

    def __init__(self, root: Path, transform, classes: list[str] | None = None):
        found = class_folders(root)
        labelled = classes is not None
        loose = sorted(e.name for e in root.iterdir() if e.is_file() and _visible(e.name) and _is_image(str(e)))
        if not found:
            raise FileNotFoundError(f"{root} has {len(loose)} image(s) but none in a class folder: each class's "
                                    f"images go in {root}/<class>/ (e.g. {loose[0]})" if loose else
                                    f"no class folder in {root} (expected {root}/<class>/*.jpg)")
        if classes is None:
            if len(found) == 1:  # every prediction would be right: nothing to learn
                raise ValueError(f"{root} has one class folder ({found[0]}): a classifier needs two or more")
            classes = found
        # a name spelled with other Unicode code points (macOS writes decomposed ü, most others composed) is
        # the same class: compared in composed form, each folder labelled by the class it spells
        index = {unicodedata.normalize("NFC", name): i for i, name in enumerate(classes)}
        extra = sorted(f for f in found if unicodedata.normalize("NFC", f) not in index)
        if extra:
            raise ValueError(f"{root} has class folders that are not among the {len(classes)} classes it is "
                             f"labelled by (the training set's, or the model's: {_few(classes)}): {_few(extra)}")
        self.classes, self.transform = list(classes), transform
        found_index = {f: index[unicodedata.normalize("NFC", f)] for f in found}
        self.samples, left_out = _scan(root, found_index)
        have = {label for _, label in self.samples}
        empty = sorted(f for f in found if found_index[f] not in have)
        if empty and not labelled:
            raise FileNotFoundError(f"{root}: no image in the class folder(s) {_few(empty)} (images: .jpg, .png, "
                                    f".gif, .bmp, .tif, .webp, .ppm)")
        for what, paths in left_out.items():
            if paths:
                warnings.warn(f"{root}: {len(paths)} {what} (e.g. {Path(paths[0]).relative_to(root)})")
        if loose:
            warnings.warn(f"{root}: {len(loose)} image(s) directly in it left out (e.g. {loose[0]}): each "
                          f"class's images go in {root}/<class>/")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return self.transform(read_rgb(path, " (remove or replace the file)")), label


class _SeededItems(Dataset):
    """`dataset[index]` with torch's RNG seeded for that sample first: an image's random crop and flip
    depend on (seed, epoch, index) only, not on the worker that loads it nor on where a resumed epoch
    starts."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with torch.random.fork_rng(devices=[]):  # without workers this is the training process's RNG
            torch.default_generator.manual_seed(seed)  # torch.manual_seed would reseed CUDA's too, unforked
            return self.dataset[index]


class FolderLoader:
    """Batches of an ImageFolder on ``device``, with the `DeviceLoader` interface (``len``, ``batches``).

    Resuming mid-epoch restores the epoch's sample order and its random crops (seeded per sample), with
    any number of worker processes.
    """

    def __init__(self, root: Path, train: bool, image_size: int, batch_size: int, *, workers: int,
                 augment: bool, drop_last: bool, seed: int, device: torch.device, rank: int = 0,
                 world_size: int = 1, channels_last: bool = False, classes: list[str] | None = None,
                 limit: int | None = None, mean: Tensor = IMAGENET_MEAN, std: Tensor = IMAGENET_STD):
        """``classes``: label the class folders by this list (the training set's), not by their own sorted
        names: a validation folder may lack some classes, never hold one the list has not. ``limit``: use
        only that many images, the same random ones (seeded apart from ``seed``) in every run. ``mean``,
        ``std``: the per-channel normalization, in the 0–255 scale (ImageNet's by default)."""
        from torchvision import transforms

        if train and augment:
            transform = transforms.Compose([transforms.RandomResizedCrop(image_size),
                                            transforms.RandomHorizontalFlip(), transforms.PILToTensor()])
        else:
            transform = eval_transform(image_size)
        self.dataset = _ImageFiles(root, transform, classes)
        if limit is not None and limit > len(self.dataset):
            raise ValueError(f"data.{'train' if train else 'test'}_size is {limit}, but {root} has "
                             f"{len(self.dataset)} images")
        if limit is not None:  # the first N would be the first classes only
            keep = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(0))[:limit]
            self.dataset.samples = [self.dataset.samples[i] for i in sorted(keep.tolist())]
        self.sampler = _ShardSampler(len(self.dataset), train, seed, rank, world_size)
        self.batch_size, self.drop_last = batch_size, train and drop_last
        self.device, self.channels_last = device, channels_last
        self.mean, self.std = mean.to(device), std.to(device)
        self.loader = DataLoader(_SeededItems(self.dataset), batch_size=batch_size, sampler=self.sampler,
                                 num_workers=workers, pin_memory=device.type == "cuda",
                                 drop_last=self.drop_last, persistent_workers=workers > 0,
                                 # its own generator for the workers' base seed, which DataLoader would
                                 # otherwise draw from the training process's RNG at every epoch
                                 generator=torch.Generator().manual_seed(seed))
        full, rest = divmod(self.sampler.per_rank, batch_size)
        self.steps = full if self.drop_last or rest == 0 else full + 1
        if self.steps == 0 and (train or not len(self.dataset)):  # an evaluation share may be empty
            raise ValueError(f"{root} has {len(self.dataset)} images: no batch of {batch_size} per process")

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def num_images(self) -> int:
        """Images in the split (every process's share)."""
        return len(self.dataset)

    def __len__(self) -> int:
        return self.steps

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """(normalized float images, labels) for the steps ``start``.. of ``epoch``, on the device."""
        self.sampler.epoch, self.sampler.start = epoch, start * self.batch_size
        try:
            for images, labels in self.loader:
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
                yield normalize(images, self.mean, self.std, self.channels_last), labels
        except ValueError as err:  # a worker's error arrives wrapped in its traceback: keep its own line
            last = str(err).strip().splitlines()[-1]
            if "Original Traceback" not in str(err) or not last.startswith("ValueError: "):
                raise
            raise ValueError(last.removeprefix("ValueError: ")) from None


def find_folder(root: Path) -> tuple[Path, Path]:
    """``root/train`` and ``root/val``; FileNotFoundError says what was expected where."""
    train, val = root / "train", root / "val"
    if not (train.is_dir() and val.is_dir()):
        if root.is_dir():
            why = " and ".join(f"no {p.name}/" for p in (train, val) if not p.is_dir()) + f" in {root}"
        else:
            why = f"{root} is a file, not a folder" if root.exists() else f"no folder {root}"
        raise FileNotFoundError(f"image folder not found ({why}): expected {train}/<class>/*.jpg and "
                                f"{val}/<class>/*.jpg")
    return train, val
