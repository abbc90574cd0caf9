"""Data: CIFAR pickles, device-side augmentation, sharding, the generated set, image folders."""

import pickle
from pathlib import Path

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lrtrain.data import build_data, find_cifar, make_sample
from lrtrain.data.cifar import DeviceLoader, channel_stats, crop_flip, normalize, read_cifar
from lrtrain.data.folder import FolderLoader

REAL_CIFAR = Path(__file__).resolve().parents[1] / "../shared/data/cifar-10-batches-py"


def _write_fake_cifar(root: Path, per_batch: int = 6) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, per_batch))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return folder


def _sample_cfg(**data):
    """A resolved data section: the generated set's by default; ``name="folder"`` takes every image."""
    sizes = {"train_size": None, "test_size": None} if data.get("name") == "folder" else {}
    return {"name": "sample", "dir": None, "batch_size": 8, "eval_batch_size": 16, "augment": True, "padding": 2,
            "drop_last": True, "train_size": 40, "test_size": 20, "image_size": 8, "num_classes": 4, "workers": 0,
            **sizes, **data}


def test_read_cifar_keeps_the_channel_planar_layout(tmp_path):
    folder = _write_fake_cifar(tmp_path)
    images, labels, test_images, test_labels = read_cifar("cifar10", find_cifar("cifar10", tmp_path))
    assert images.shape == (30, 3, 32, 32) and images.dtype == torch.uint8
    assert test_images.shape == (6, 3, 32, 32) and labels.dtype == torch.int64
    with open(folder / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    c, y, x = 2, 5, 7
    assert images[6, c, y, x].item() == raw[b"data"][0, c * 1024 + y * 32 + x]
    assert labels[6].item() == raw[b"labels"][0]


def test_missing_cifar_names_every_place_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("LRTRAIN_DATA", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError) as err:
        find_cifar("cifar10")
    message = str(err.value)
    assert "CIFAR-10 not found" in message and str(tmp_path / "env" / "cifar-10-batches-py") in message
    assert "LRTRAIN_DATA" in message
    with pytest.raises(FileNotFoundError, match="explicit"):
        find_cifar("cifar100", tmp_path / "explicit")


def test_corrupt_cifar_file_is_named(tmp_path):
    folder = _write_fake_cifar(tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"corrupt CIFAR file .*data_batch_3"):
        read_cifar("cifar10", folder)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, f)
    with pytest.raises(ValueError, match=r"data_batch_3: expected N×3072"):
        read_cifar("cifar10", folder)
    folder = _write_fake_cifar(tmp_path / "labels")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 10]}, f)
    with pytest.raises(ValueError, match=r"test_batch: labels outside 0\.\.9"):
        read_cifar("cifar10", folder)


@pytest.mark.skipif(not REAL_CIFAR.is_dir(), reason="real CIFAR-10 not present")
def test_real_cifar10_is_found_by_default_and_balanced(monkeypatch):
    monkeypatch.delenv("LRTRAIN_DATA", raising=False)
    images, labels, test_images, test_labels = read_cifar("cifar10", find_cifar("cifar10"))
    assert images.shape == (50000, 3, 32, 32) and test_images.shape == (10000, 3, 32, 32)
    assert torch.bincount(labels).tolist() == [5000] * 10
    mean, std = channel_stats(images)
    assert torch.allclose(mean / 255, torch.tensor([0.4914, 0.4822, 0.4465]), atol=1e-3)
    assert torch.allclose(std / 255, torch.tensor([0.2470, 0.2435, 0.2616]), atol=1e-3)


def test_crop_flip_matches_pad_slice_and_mirror():
    images = torch.randint(0, 256, (6, 3, 7, 9), dtype=torch.uint8)
    offsets = torch.tensor([[0, 0], [4, 4], [1, 3], [2, 0], [0, 4], [3, 1]])
    flips = torch.tensor([False, True, False, True, True, False])
    out = crop_flip(images, offsets, flips, padding=2)
    padded = F.pad(images, (2, 2, 2, 2))
    for i in range(6):
        oy, ox = offsets[i].tolist()
        expected = padded[i, :, oy:oy + 7, ox:ox + 9]
        assert torch.equal(out[i], expected.flip(-1) if flips[i] else expected)


def test_normalize_gives_zero_mean_unit_std_and_channels_last():
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    mean, std = channel_stats(images)
    x = normalize(images, mean, std, channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)


def _loader(images, **kw):
    args = dict(mean=torch.zeros(3), std=torch.ones(3), shuffle=True, augment=True, padding=2, seed=3)
    return DeviceLoader(images, torch.arange(len(images)), 4, **{**args, **kw})


def test_device_loader_epochs_are_reproducible_and_resumable():
    images = torch.randint(0, 256, (22, 3, 6, 6), dtype=torch.uint8)
    loader = _loader(images)
    assert len(loader) == 5  # 22 // 4, the incomplete batch dropped
    first = list(loader.batches(epoch=0))
    again = list(loader.batches(epoch=0))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    other = list(loader.batches(epoch=1))
    assert not torch.equal(torch.cat([y for _, y in first]), torch.cat([y for _, y in other]))
    tail = list(loader.batches(epoch=0, start=3))
    assert len(tail) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(first[3:], tail))


def test_device_loader_shards_are_disjoint_and_evaluation_covers_everything():
    images = torch.randint(0, 256, (21, 3, 6, 6), dtype=torch.uint8)
    shards = [torch.cat([y for _, y in _loader(images, rank=r, world_size=2).batches(2)]) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 8
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    evals = [_loader(images, rank=r, world_size=2, shuffle=False, augment=False, drop_last=False)
             for r in range(2)]
    seen = torch.cat([y for loader in evals for _, y in loader.batches()])
    assert sorted(seen.tolist()) == list(range(21))
    assert [len(loader) for loader in evals] == [3, 3]  # 11 and 10 images, the last batch kept


def test_each_process_crops_its_images_as_a_single_process_would():
    images = torch.randint(0, 256, (16, 3, 6, 6), dtype=torch.uint8)
    one = _loader(images)._plan(epoch=1)
    plans = [_loader(images, rank=r, world_size=2)._plan(epoch=1) for r in range(2)]
    assert not torch.equal(plans[0][1], plans[1][1])  # the two processes draw different crops
    for rank, (order, offsets, flips) in enumerate(plans):  # position i of the epoch: the same crop and flip
        assert torch.equal(order, one[0][rank::2])
        assert torch.equal(offsets, one[1][rank::2]) and torch.equal(flips, one[2][rank::2])


def test_sample_set_is_deterministic_balanced_and_seeded():
    a = make_sample(num_train=40, num_test=20, image_size=8, num_classes=4, seed=1)
    b = make_sample(num_train=40, num_test=20, image_size=8, num_classes=4, seed=1)
    c = make_sample(num_train=40, num_test=20, image_size=8, num_classes=4, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert torch.bincount(a[1]).tolist() == [10] * 4 and torch.bincount(a[3]).tolist() == [5] * 4
    assert a[0].dtype == torch.uint8 and a[0].float().std() > 20  # not a flat image
    # the test set does not depend on the training set's size (runs of other sizes are scored alike)
    d = make_sample(num_train=100, num_test=20, image_size=8, num_classes=4, seed=1)
    assert torch.equal(a[2], d[2]) and torch.equal(a[3], d[3])


def test_build_data_for_the_sample_set():
    data = build_data(_sample_cfg(), device=torch.device("cpu"), seed=0)
    assert data.num_classes == 4 and data.input_size == (1, 3, 8, 8)
    assert len(data.train) == 5 and len(data.test) == 2
    x, y = next(data.train.batches(0))
    assert x.shape == (8, 3, 8, 8) and x.dtype == torch.float32 and y.shape == (8,)
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        build_data(_sample_cfg(), device=torch.device("cpu"), world_size=3)


def test_data_say_their_input_normalization_and_take_a_model_s_own(tmp_path):
    _write_fake_cifar(tmp_path)
    cfg = _sample_cfg(name="cifar10", dir=str(tmp_path), train_size=16, test_size=5, batch_size=4)
    small = build_data(cfg, device=torch.device("cpu"))
    images, *_ = read_cifar("cifar10", tmp_path / "cifar-10-batches-py")
    mean, std = channel_stats(images[:16])
    assert small.normalize == {"mean": (mean.double() / 255).tolist(), "std": (std.double() / 255).tolist()}
    whole = build_data({**cfg, "train_size": None}, device=torch.device("cpu"))
    assert whole.normalize != small.normalize
    same = build_data({**cfg, "train_size": None}, device=torch.device("cpu"), normalize=small.normalize)
    assert same.normalize == small.normalize
    assert torch.equal(next(same.test.batches())[0], next(small.test.batches())[0])  # bit for bit
    for bad in ({"mean": [0.5] * 3}, {"mean": [0.5] * 3, "std": [0.2, 0.2, 0.0]}, {"mean": [0.5], "std": [0.2]}):
        with pytest.raises(ValueError, match="input normalization"):
            build_data(cfg, device=torch.device("cpu"), normalize=bad)


def test_build_data_reads_cifar_subsets(tmp_path):
    _write_fake_cifar(tmp_path)
    cfg = _sample_cfg(name="cifar10", dir=str(tmp_path), train_size=16, test_size=5, batch_size=4)
    data = build_data(cfg, device=torch.device("cpu"))
    assert data.num_classes == 10 and len(data.train) == 4 and len(data.test) == 1
    assert "CIFAR-10" in data.description and "16 train, 5 test" in data.description


def test_folder_loader_crops_and_labels_by_folder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for k, cls in enumerate(["ant", "bee"]):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (12, 10), (200 * k, 40 * i, 90)).save(tmp_path / split / cls / f"{i}.png")
    cfg = _sample_cfg(name="folder", dir=str(tmp_path), image_size=8, batch_size=4, eval_batch_size=4)
    data = build_data(cfg, device=torch.device("cpu"), seed=0, channels_last=True)
    assert data.num_classes == 2 and data.input_size == (1, 3, 8, 8)
    assert isinstance(data.train, FolderLoader) and len(data.train) == 1 and len(data.test) == 2
    x, y = next(data.train.batches(0))
    assert x.shape == (4, 3, 8, 8) and x.is_contiguous(memory_format=torch.channels_last)
    xs, ys = zip(*data.test.batches())
    labels = torch.cat(ys)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    # Class "bee" images are red (200) and "ant" images are not: the red channel separates them.
    red = torch.cat(xs)[:, 0].mean(dim=(1, 2))
    assert (red[labels == 1] > red[labels == 0].max()).all()


def test_validation_images_take_the_training_sets_labels_when_it_lacks_a_class(tmp_path):
    from PIL import Image

    for split, classes in (("train", ["ant", "bee", "cat"]), ("val", ["ant", "cat"])):
        for cls in classes:
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / cls / "0.png")
    cfg = _sample_cfg(name="folder", dir=str(tmp_path), image_size=8, batch_size=2, eval_batch_size=4)
    data = build_data(cfg, device=torch.device("cpu"))
    assert data.num_classes == 3 and torch.cat([y for _, y in data.test.batches()]).tolist() == [0, 2]
    (tmp_path / "val" / "dog").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "dog" / "0.png")
    with pytest.raises(ValueError, match=r"class folders that are not among the 3 classes it is labelled by "
                                         r"\(the training set's, or the model's: .*\): dog$"):
        build_data(cfg, device=torch.device("cpu"))


def test_folder_without_train_and_val_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected .*train/<class>"):
        build_data(_sample_cfg(name="folder", dir=str(tmp_path)), device=torch.device("cpu"))


def test_folder_crops_are_the_same_on_resume_and_with_any_number_of_workers(tmp_path, monkeypatch):
    from PIL import Image

    for split in ("train", "val"):
        for k, cls in enumerate(["ant", "bee"]):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (16, 12), (60 * k + 10 * i, 7 * i, 90)).save(tmp_path / split / cls / f"{i}.png")
            Image.effect_noise((16, 12), 64).convert("RGB").save(tmp_path / split / cls / "noise.png")

    def loader(workers):
        return FolderLoader(tmp_path / "train", True, 8, 2, workers=workers, augment=True, drop_last=True, seed=3,
                            device=torch.device("cpu"))

    whole = [x for x, _ in loader(0).batches(epoch=1)]
    assert len(whole) == 5
    resumed = [x for x, _ in loader(0).batches(epoch=1, start=2)]
    assert all(torch.equal(a, b) for a, b in zip(whole[2:], resumed, strict=True))
    parallel = [x for x, _ in loader(2).batches(epoch=1)]
    assert all(torch.equal(a, b) for a, b in zip(whole, parallel, strict=True))
    other_epoch = [x for x, _ in loader(0).batches(epoch=2)]
    assert not all(torch.equal(a, b) for a, b in zip(whole, other_epoch))
    state = torch.get_rng_state()
    reseeded = []  # CUDA's generators too: torch.manual_seed would reseed them, outside the fork
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded.append)
    next(loader(0).batches(epoch=0))
    assert torch.equal(torch.get_rng_state(), state) and reseeded == []  # the training process's RNGs untouched


def _two_class_folder(root, extra=()):
    from PIL import Image

    for split in ("train", "val"):
        for k, cls in enumerate(["ant", "bee"]):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (12, 10), (200 * k, 40 * i, 90)).save(root / split / cls / f"{i}.png")
    for name, content in extra:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)


def test_hidden_folders_and_files_are_no_data(tmp_path):
    _two_class_folder(tmp_path, [("train/.ipynb_checkpoints/0.png", b"x"), ("train/ant/._0.png", b"\0\5"),
                                 ("train/ant/.DS_Store", b"x"), ("train/bee/notes.txt", b"x"),
                                 ("train/bee/.thumbnails/0.png", b"x"), ("train/bee/.thumbnails/a.txt", b"x")])
    cfg = _sample_cfg(name="folder", dir=str(tmp_path), image_size=8, batch_size=2, eval_batch_size=2)
    with pytest.warns(UserWarning, match=r"train: 1 file\(s\) left out, not of an image format \(e.g. bee/notes.txt\)"):
        data = build_data(cfg, device=torch.device("cpu"))
    assert data.num_classes == 2 and data.train.classes == ["ant", "bee"] and len(data.train.dataset) == 6


@pytest.mark.parametrize("mode, scale", [("I;16", 257), ("I", 257), ("F", 1 / 255), ("L", 1)])
def test_grey_images_of_more_than_8_bits_are_scaled_not_clipped(tmp_path, mode, scale):
    import numpy as np
    from PIL import Image

    from lrtrain.data.folder import read_rgb

    levels = np.arange(48, dtype=np.float64).reshape(6, 8) * 5  # 0..235 in 8 bits
    stored = levels * scale
    image_types = {"I;16": np.uint16, "I": np.int32, "F": np.float32, "L": np.uint8}
    image = Image.fromarray(stored.astype(image_types[mode]))
    assert image.mode == mode
    path = tmp_path / f"grey.{'tif' if mode in ('I', 'F') else 'png'}"
    image.save(path)
    rgb = np.asarray(read_rgb(path))
    assert rgb.shape == (6, 8, 3) and (rgb == rgb[..., :1]).all()
    assert np.abs(rgb[..., 0] - levels).max() <= 1  # the 8-bit picture it is, not white
    if mode in ("I;16", "I"):  # a near-black 16-bit picture (values 0-235 of 65535) stays near black
        Image.fromarray(levels.astype(image_types[mode])).save(path)
        assert np.asarray(read_rgb(path)).max() <= 1


def test_gif_and_upper_case_extensions_are_images_and_a_video_is_not(tmp_path):
    from PIL import Image

    _two_class_folder(tmp_path)
    Image.new("P", (12, 10), 3).save(tmp_path / "train" / "bee" / "moving.gif")
    Image.new("RGB", (12, 10)).save(tmp_path / "train" / "ant" / "old.BMP")
    (tmp_path / "train" / "ant" / "clip.mpg").write_bytes(b"\0\0\1\xba" + bytes(60))  # PIL registers .mpg
    cfg = _sample_cfg(name="folder", dir=str(tmp_path), image_size=8, batch_size=2, eval_batch_size=2)
    with pytest.warns(UserWarning, match=r"1 file\(s\) left out, not of an image format \(e.g. ant/clip.mpg\)"):
        data = build_data(cfg, device=torch.device("cpu"))
    assert len(data.train.dataset) == 8
    images, labels = next(data.train.batches(0))
    assert images.shape == (2, 3, 8, 8)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_image_that_cannot_be_decoded_is_named(tmp_path, workers):
    from PIL import Image

    _two_class_folder(tmp_path, [("train/bee/empty.png", b"")])
    Image.new("RGB", (64, 64)).save(tmp_path / "val" / "ant" / "whole.jpg")
    cut = (tmp_path / "val" / "ant" / "whole.jpg").read_bytes()
    (tmp_path / "val" / "ant" / "cut.jpg").write_bytes(cut[: len(cut) // 2])
    cfg = _sample_cfg(name="folder", dir=str(tmp_path), image_size=8, batch_size=7, eval_batch_size=8,
                      workers=workers, drop_last=False)
    data = build_data(cfg, device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"^cannot read image .*train/bee/empty.png: not an image format PIL can decode"):
        list(data.train.batches(0))
    with pytest.raises(ValueError, match=r"^cannot read image .*val/ant/cut.jpg: .*\(remove or replace the file\)$"):
        list(data.test.batches())


def test_an_empty_class_folder_and_a_missing_split_name_their_folder(tmp_path):
    _two_class_folder(tmp_path)
    (tmp_path / "train" / "cat").mkdir()
    cfg = _sample_cfg(name="folder", dir=str(tmp_path), image_size=8, batch_size=2, eval_batch_size=2)
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path / 'train'}: no image in the class folder\(s\) cat \(images: .jpg"):
        build_data(cfg, device=torch.device("cpu"))
    (tmp_path / "train" / "cat").rmdir()
    (tmp_path / "val").rename(tmp_path / "test")
    with pytest.raises(FileNotFoundError, match=rf"image folder not found \(no val/ in {tmp_path}\)"):
        build_data(cfg, device=torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match=r"image folder not found \(no folder .*nowhere\)"):
        build_data(dict(cfg, dir=str(tmp_path / "nowhere")), device=torch.device("cpu"))


def test_an_incomplete_cifar_folder_names_the_missing_file(tmp_path):
    folder = _write_fake_cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=rf"CIFAR-10 in {folder} is incomplete: no data_batch_3"):
        find_cifar("cifar10", tmp_path)


def test_asking_for_more_cifar_images_than_there_are_says_so(tmp_path):
    _write_fake_cifar(tmp_path)
    cfg = _sample_cfg(name="cifar10", dir=str(tmp_path), train_size=10**6, test_size=5, batch_size=4)
    with pytest.raises(ValueError, match=r"data.train_size is 1000000, but CIFAR-10 has \d+ such images"):
        build_data(cfg, device=torch.device("cpu"))


def test_a_folders_train_and_test_size_take_the_same_random_images_of_every_class(tmp_path):
    _two_class_folder(tmp_path)
    cfg = _sample_cfg(name="folder", dir=str(tmp_path), image_size=8, batch_size=2, eval_batch_size=2,
                      train_size=4, test_size=3)
    data = build_data(cfg, device=torch.device("cpu"))
    train = data.train.dataset.samples
    assert len(train) == 4 and len(data.test.dataset.samples) == 3 and "(4 train, 3 val)" in data.description
    assert {label for _, label in train} == {0, 1}  # not the first four files: those are one class
    assert build_data(cfg, device=torch.device("cpu")).train.dataset.samples == train
    with pytest.raises(ValueError, match=r"data.train_size is 7, but .*train has 6 images"):
        build_data(dict(cfg, train_size=7), device=torch.device("cpu"))
    assert len(build_data(dict(cfg, train_size=6), device=torch.device("cpu")).train.dataset) == 6


def test_test_data_of_a_folder_needs_only_its_val_split(tmp_path):
    from lrtrain.data import build_test_data

    _two_class_folder(tmp_path)
    cfg = _sample_cfg(name="folder", dir=str(tmp_path), image_size=8, batch_size=128, eval_batch_size=4)
    data = build_test_data(cfg, device=torch.device("cpu"))  # 6 training images: no batch of 128, no matter
    assert data.train is None and data.classes == ["ant", "bee"] and data.input_size == (1, 3, 8, 8)
    assert torch.cat([y for _, y in data.test.batches()]).tolist() == [0, 0, 0, 1, 1, 1]
    (tmp_path / "train").rename(tmp_path / "elsewhere")
    named = build_test_data(cfg, device=torch.device("cpu"), classes=["bee", "ant"])  # a model's own order
    assert torch.cat([y for _, y in named.test.batches()]).tolist() == [1, 1, 1, 0, 0, 0]
    assert build_test_data(cfg, device=torch.device("cpu")).classes == ["ant", "bee"]  # val's own folders
    assert named.normalize["mean"] == pytest.approx([0.485, 0.456, 0.406], abs=1e-7)  # ImageNet's by default
    assert named.normalize["std"] == pytest.approx([0.229, 0.224, 0.225], abs=1e-7)
    grey = {"mean": [0.5] * 3, "std": [0.25] * 3}
    x, _ = next(build_test_data(cfg, device=torch.device("cpu"), classes=["bee", "ant"], normalize=grey).test.batches())
    raw, _ = next(named.test.batches())
    imagenet = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (raw * imagenet[1] + imagenet[0] - 0.5) / 0.25, atol=1e-5, rtol=0)


def test_a_training_folder_of_one_class_is_refused(tmp_path):
    import shutil

    _two_class_folder(tmp_path)
    shutil.rmtree(tmp_path / "train" / "bee")
    cfg = _sample_cfg(name="folder", dir=str(tmp_path), image_size=8, batch_size=2, eval_batch_size=2)
    with pytest.raises(ValueError, match=r"train has one class folder \(ant\): a classifier needs two or more"):
        build_data(cfg, device=torch.device("cpu"))


def test_cifar100_reads_its_fine_labels_and_names_and_trains_a_100_class_model(tmp_path):
    from lrtrain.config import resolve
    from lrtrain.train import Trainer

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 40), ("test", 10)):
        fine = [99, 0, *rng.integers(0, 100, n - 2)]
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": fine,
                 b"coarse_labels": [f // 5 for f in fine]}  # the 20 superclasses: not the labels
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    names = [f"class_{i:02d}".encode() for i in range(100)]
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": names, b"coarse_label_names": names[:20]}, f)

    _, labels, _, test_labels = read_cifar("cifar100", find_cifar("cifar100", tmp_path))
    assert labels[:2].tolist() == [99, 0] and len(test_labels) == 10
    cfg = resolve({"out_dir": str(tmp_path / "run"), "model": {"name": "resnet20"},
                   "data": {"name": "cifar100", "dir": str(tmp_path), "batch_size": 8, "eval_batch_size": 10},
                   "train": {"epochs": 1, "progress": False, "device": "cpu"}})
    trainer = Trainer(cfg)
    summary = trainer.fit()
    assert trainer.model(torch.zeros(1, 3, 32, 32)).shape == (1, 100)
    assert summary["num_classes"] == 100 and summary["classes"][99] == "class_99"


def test_a_cifar_copy_resaved_with_text_keys_reads_as_the_original(tmp_path):
    from lrtrain.data.cifar import cifar_class_names

    folder = _write_fake_cifar(tmp_path)
    original = read_cifar("cifar10", folder)
    for path in folder.iterdir():  # as a Python 3 script re-saving the pickles would write them
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        if isinstance(batch, dict):
            with open(path, "wb") as f:
                pickle.dump({k.decode(): v for k, v in batch.items()}, f)
    resaved = read_cifar("cifar10", folder)
    assert all(torch.equal(a, b) for a, b in zip(original, resaved))
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    assert cifar_class_names("cifar10", folder) == [f"c{i}" for i in range(10)]


def test_an_evaluation_share_may_be_empty_a_training_share_may_not():
    images, labels = torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64)
    common = dict(batch_size=4, mean=torch.zeros(3), std=torch.ones(3), augment=False, drop_last=False,
                  world_size=2)
    shares = [DeviceLoader(images, labels, shuffle=False, rank=rank, **common) for rank in (0, 1)]
    assert [len(list(s.batches(epoch=0))) for s in shares] == [1, 0]  # one test image, two processes
    with pytest.raises(ValueError, match="1 images give no batch of 4 per process"):
        DeviceLoader(images, labels, shuffle=True, rank=0, **common)


def test_a_class_folder_spelled_in_decomposed_unicode_is_the_same_class(tmp_path):
    import unicodedata

    from PIL import Image

    composed = unicodedata.normalize("NFC", "müsli")
    for split, name in (("train", composed), ("val", unicodedata.normalize("NFD", composed))):  # val from macOS
        for cls in (name, "plain"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (10, 10), (40 * i, 90, 0 if cls == "plain" else 200)).save(
                    tmp_path / split / cls / f"{i}.png")
    cfg = _sample_cfg(name="folder", dir=str(tmp_path), image_size=8, batch_size=2, eval_batch_size=2)
    data = build_data(cfg, device=torch.device("cpu"))
    assert data.test.classes == data.train.classes == [composed, "plain"]
    assert sorted(label for _, label in data.test.dataset.samples) == [0, 0, 1, 1]


def test_images_outside_any_class_folder_are_said_not_dropped_in_silence(tmp_path):
    from PIL import Image

    _two_class_folder(tmp_path)
    Image.new("RGB", (10, 10)).save(tmp_path / "train" / "stray.png")
    cfg = _sample_cfg(name="folder", dir=str(tmp_path), image_size=8, batch_size=2, eval_batch_size=2)
    with pytest.warns(UserWarning, match=r"train: 1 image\(s\) directly in it left out \(e.g. stray.png\)"):
        build_data(cfg, device=torch.device("cpu"))
    (tmp_path / "train" / "stray.png").unlink()
    for cls in ("ant", "bee"):  # a flat val/: its images moved out of their class folders
        for image in (tmp_path / "val" / cls).iterdir():
            image.rename(tmp_path / "val" / f"{cls}{image.name}")
        (tmp_path / "val" / cls).rmdir()
    with pytest.raises(FileNotFoundError, match=r"val has 6 image\(s\) but none in a class folder"):
        build_data(cfg, device=torch.device("cpu"))


def test_links_are_followed_once_and_a_link_to_nothing_is_said(tmp_path):
    from PIL import Image

    _two_class_folder(tmp_path)
    outside = tmp_path / "more_ants"
    outside.mkdir()
    Image.new("RGB", (10, 10)).save(outside / "9.png")
    ant = tmp_path / "train" / "ant"
    (ant / "more").symlink_to(outside)  # a linked folder of images: theirs too
    (ant / "again").symlink_to(outside)  # the same folder twice: its images once
    (ant / "loop").symlink_to(ant)  # a folder above: torchvision walked it ~40 times deep
    (ant / "gone.png").symlink_to(tmp_path / "deleted.png")
    cfg = _sample_cfg(name="folder", dir=str(tmp_path), image_size=8, batch_size=2, eval_batch_size=2)
    with pytest.warns(UserWarning) as caught:
        data = build_data(cfg, device=torch.device("cpu"))
    said = sorted(str(w.message) for w in caught)
    assert any(re.search(r"train: 2 folder\(s\) left out, reached a second time through a link \(e.g. ant/loop\)",
                         m) for m in said), said
    assert any("train: 1 file(s) left out, links to nothing (e.g. ant/gone.png)" in m for m in said), said
    names = sorted(Path(p).relative_to(ant).as_posix() for p, label in data.train.dataset.samples if label == 0)
    assert names == ["0.png", "1.png", "2.png", "again/9.png"]


def test_a_link_to_another_class_or_above_the_data_is_left_out_not_walked(tmp_path):
    """`ant/up -> ..` walked the whole root: every bee under the label ant; `ant/bees -> ../bee` the same."""
    _two_class_folder(tmp_path)
    ant = tmp_path / "train" / "ant"
    (ant / "up").symlink_to(tmp_path / "train")
    (ant / "bees").symlink_to(tmp_path / "train" / "bee")
    (ant / "everything").symlink_to(tmp_path)  # a folder holding the data set
    cfg = _sample_cfg(name="folder", dir=str(tmp_path), image_size=8, batch_size=2, eval_batch_size=2)
    with pytest.warns(UserWarning) as caught:
        data = build_data(cfg, device=torch.device("cpu"))
    said = " | ".join(str(w.message) for w in caught)
    assert "1 folder(s) left out, reached a second time through a link (e.g. ant/bees)" in said
    assert "2 folder(s) left out, links to a folder holding the data set (e.g. ant/everything)" in said
    labels = sorted(label for _, label in data.train.dataset.samples)
    assert labels == [0, 0, 0, 1, 1, 1]  # three ants, three bees: nothing twice, nothing relabelled
