"""Classifying image files: preprocessing as the test images had it, probabilities, ``lrtrain predict``."""

import doctest
import json
import pickle
import textwrap

import pytest
import torch
from PIL import Image

import lrtrain as lr
from lrtrain import cli, prediction
from lrtrain.data import build_test_data
from lrtrain.data.cifar import cifar_class_names
from lrtrain.evaluation import resolve_source
from lrtrain.prediction import predict, read_images

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

NAMES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _png(path, pixels):
    """Write a uint8 3×H×W tensor as a (lossless) PNG."""
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(path)
    return path


def test_an_image_of_the_input_size_is_read_unchanged_and_a_larger_one_resized_and_cropped(tmp_path):
    pixels = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    small = _png(tmp_path / "a.png", pixels)
    wide = _png(tmp_path / "b.png", pixels.repeat_interleave(3, 1).repeat_interleave(6, 2))  # 24 × 48
    images = read_images([small, wide], 8)
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 8, 8)
    assert torch.equal(images[0], pixels)
    assert torch.equal(images[1], read_images([wide], 8, resize=8)[0])  # the shorter side to the input size
    assert not torch.equal(read_images([wide], 8, resize=12)[0], images[1])  # a folder model's 8 / 0.875 ...


def test_unreadable_images_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such image file: .*missing.png"):
        read_images([tmp_path / "missing.png"], 8)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image .*bad.png: not an image format PIL can decode$"):
        read_images([tmp_path / "bad.png"], 8)
    with pytest.raises(ValueError, match="is a folder: give image files"):
        read_images([tmp_path], 8)
    _png(tmp_path / "whole.png", torch.zeros(3, 40, 40, dtype=torch.uint8))
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    with pytest.raises(ValueError, match="cannot read image .*cut.png: "):
        read_images([tmp_path / "cut.png"], 8)


def test_grey_and_transparent_images_are_read_as_rgb(tmp_path):
    Image.new("L", (8, 8), 77).save(tmp_path / "grey.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(tmp_path / "clear.png")
    images = read_images([tmp_path / "grey.png", tmp_path / "clear.png"], 8)
    assert images[0].unique().tolist() == [77] and images[1][:, 0, 0].tolist() == [10, 20, 30]


def test_predict_gives_the_softmax_of_the_normalized_images_likeliest_first():
    torch.manual_seed(0)
    model = lr.models.create("resnet20").eval()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    record = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
    probs, labels = predict(model, images, record, top=3, batch_size=2)
    mean, std = (torch.tensor(record[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        expected = model((images.float() / 255 - mean) / std).softmax(1)
    assert labels.shape == (5, 3) and torch.equal(labels[:, 0], expected.argmax(1))
    torch.testing.assert_close(probs, expected.gather(1, labels), atol=1e-5, rtol=1e-4)
    assert bool((probs[:, :-1] >= probs[:, 1:]).all())
    assert predict(model, images, record, top=50)[0].shape == (5, 10)  # at most every class
    with pytest.raises(TypeError, match="predict takes uint8 images"):
        predict(model, images.float() / 255, record)  # 0-1 floats would be scaled twice
    half = lr.models.create("resnet20").to(torch.bfloat16).eval()  # a compact model may be saved so
    assert predict(half, images, record)[0].dtype == torch.float32


def test_the_module_example_runs():
    assert doctest.testmod(prediction).failed == 0


def _fake_cifar_with_names(root):
    from test_data import _write_fake_cifar

    folder = _write_fake_cifar(root)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in NAMES]}, f)
    return folder


def test_cifar_class_names_come_from_the_meta_file_where_it_can_be_read(tmp_path):
    folder = _fake_cifar_with_names(tmp_path)
    assert cifar_class_names("cifar10", folder) == NAMES
    (folder / "batches.meta").write_bytes(b"damaged")
    assert cifar_class_names("cifar10", folder) is None


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    """A finished tiny dense run on a fake CIFAR-10 with class names, trained on 16 of its 30 images."""
    root = tmp_path_factory.mktemp("predict")
    _fake_cifar_with_names(root / "data")
    (root / "recipe.yaml").write_text(textwrap.dedent(f"""
        model: {{name: resnet20}}
        data: {{name: cifar10, dir: {root / 'data'}, train_size: 16, batch_size: 8, eval_batch_size: 10}}
        train: {{epochs: 1, progress: false}}
        """))
    assert cli.main(["train", str(root / "recipe.yaml"), "--out-dir", str(root / "run")]) == 0
    return root


def _test_images_as_files(root, run):
    """The run's test images as PNG files, and the model's class probabilities for each, as evaluation sees
    them."""
    model, cfg, arch, *_ = resolve_source(run, [])
    data = build_test_data(cfg["data"], device=torch.device("cpu"), normalize=arch["normalize"])
    images = torch.cat([x for x, _ in data.test.batches()])
    with torch.no_grad():
        expected = model(images).softmax(1)
    raw = data.test.images  # uint8, as read
    return [str(_png(root / f"test{i}.png", raw[i])) for i in range(len(raw))], expected


def _printed(lines):
    """``[(name, percent), ...]`` per printed line of `lrtrain predict`."""
    return [[(item.rsplit(" ", 1)[0], float(item.rsplit(" ", 1)[1].rstrip("%")))
             for item in line.split(": ", 1)[1].split(", ")] for line in lines]


def test_lrtrain_predict_gives_the_probabilities_the_models_evaluation_does(cifar_run, capsys, monkeypatch):
    run = cifar_run / "run"
    assert json.loads((run / "summary.json").read_text())["classes"] == NAMES
    files, expected = _test_images_as_files(cifar_run, run)
    capsys.readouterr()
    assert cli.main(["predict", str(run), *files, "--top", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == files
    for row, probs in zip(_printed(lines), expected):
        ranked = probs.argsort(descending=True)[:3].tolist()
        assert [name for name, _ in row] == [NAMES[k] for k in ranked]
        assert [p for _, p in row] == pytest.approx([100 * probs[k].item() for k in ranked], abs=0.051)
    monkeypatch.setattr(cli, "PREDICT_CHUNK", 4)  # a chunk of 4 and one of 2: the same lines, in order
    assert cli.main(["predict", str(run), *files, "--top", "3"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == lines and len(files) % 4 == 2


def test_a_file_without_its_normalization_takes_its_runs_data_or_refuses(cifar_run, tmp_path, capsys):
    run = cifar_run / "run"
    files, _ = _test_images_as_files(cifar_run, run)
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_bytes((run / "config.yaml").read_bytes())
    blob = torch.load(run / "compact.pt", weights_only=True)
    for key in ("normalize", "classes", "trained_on"):
        del blob["arch"][key]  # as an older lrtrain wrote it
    torch.save(blob, old / "compact.pt")
    # the run's own 16 training images' statistics, not those of the copy's 30
    old_facts, run_facts = ({k: prediction.prepared(path)[1][k] for k in ("normalize", "classes")}
                            for path in (old, run))
    assert old_facts == run_facts
    capsys.readouterr()
    assert cli.main(["predict", str(run), *files]) == 0
    recorded = capsys.readouterr().out.strip().splitlines()
    assert cli.main(["predict", str(old), *files]) == 0
    note, *lines = capsys.readouterr().out.strip().splitlines()
    assert note == (f"note: {old / 'compact.pt'} does not record its input normalization (written by an older "
                    f"lrtrain): taken from its run's data, CIFAR-10 from {cifar_run / 'data'}/cifar-10-batches-py "
                    "(16 train, 6 test)")
    assert lines == recorded
    assert cli.main(["predict", str(old), files[0], "--data-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "and its run's data cannot give it: CIFAR-10 not found" in err and err.count("\n") == 1
    (old / "config.yaml").write_text((run / "config.yaml").read_text() + "surprise: 1\n")  # a newer lrtrain's
    assert cli.main(["predict", str(old), files[0]]) == 2
    assert "and its run's recipe cannot tell it: " in capsys.readouterr().err
    (old / "config.yaml").unlink()  # no run beside it: nothing says what data it was trained on
    assert cli.main(["predict", str(old / "compact.pt"), files[0]]) == 2
    assert "and no config.yaml of its run beside it says what it was trained on" in capsys.readouterr().err
    assert cli.main(["evaluate", str(old / "compact.pt"), "--data-dir", str(cifar_run / "data")]) == 0
    assert "and no config.yaml of its run is beside it: scored on CIFAR-10" in \
        capsys.readouterr().out  # evaluate scores it all the same, and says on what


def test_a_folder_models_images_are_resized_as_its_validation_images_were(tmp_path, capsys):
    from test_data import _two_class_folder

    _two_class_folder(tmp_path / "images")  # 12 × 10 images: resized to 9 then cropped, not to 8
    (tmp_path / "folder.yaml").write_text(textwrap.dedent(f"""
        model: {{name: resnet20}}
        data: {{name: folder, dir: {tmp_path / 'images'}, image_size: 8, batch_size: 2, workers: 0}}
        train: {{epochs: 1, progress: false}}
        """))
    assert cli.main(["train", str(tmp_path / "folder.yaml"), "--out-dir", str(tmp_path / "run")]) == 0
    model, facts, side, _ = prediction.prepared(tmp_path / "run")
    assert side == 8 and facts["resize"] == 9 and facts["classes"] == ["ant", "bee"]  # round(8 / 0.875)
    files = sorted(str(p) for p in (tmp_path / "images" / "val").rglob("*.png"))
    model, cfg, arch, *_ = resolve_source(tmp_path / "run", [])
    data = build_test_data(cfg["data"], device=torch.device("cpu"), classes=arch["classes"])
    with torch.no_grad():
        expected = torch.cat([model(x) for x, _ in data.test.batches()]).softmax(1)
    probs, labels = predict(model, read_images(files, side, facts["resize"]), facts["normalize"], top=2)
    torch.testing.assert_close(probs, expected.gather(1, labels), atol=1e-5, rtol=1e-4)
    capsys.readouterr()
    assert cli.main(["predict", str(tmp_path / "run"), *files, "--top", "2"]) == 0
    for row, p, k in zip(_printed(capsys.readouterr().out.strip().splitlines()), probs, labels):
        assert row == [(["ant", "bee"][j], pytest.approx(100 * q, abs=0.051)) for q, j in zip(p.tolist(), k.tolist())]
    # a file of an older lrtrain, its folder gone: every folder model's normalization, no images needed
    blob = torch.load(tmp_path / "run" / "compact.pt", weights_only=True)
    for key in ("normalize", "resize"):
        del blob["arch"][key]
    torch.save(blob, tmp_path / "run" / "compact.pt")
    (tmp_path / "images").rename(tmp_path / "gone")
    assert prediction.prepared(tmp_path / "run")[1] == facts
    assert "an image-folder model's, ImageNet's statistics" in capsys.readouterr().out


def test_an_unreadable_image_costs_its_own_line_only(cifar_run, tmp_path, capsys, monkeypatch):
    run = cifar_run / "run"
    good = _png(tmp_path / "good.png", torch.zeros(3, 32, 32, dtype=torch.uint8))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    capsys.readouterr()
    assert cli.main(["predict", str(run), str(tmp_path / "bad.png"), str(good), str(tmp_path / "gone.png")]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"{good}: ") and out.count("\n") == 1
    assert err.splitlines() == [f"lrtrain: error: cannot read image {tmp_path / 'bad.png'}: not an image format PIL "
                                "can decode", f"lrtrain: error: no such image file: {tmp_path / 'gone.png'}"]
    assert cli.main(["predict", str(run), str(tmp_path / "bad.png")]) == 2  # nothing to predict: the error alone
    assert capsys.readouterr().err.count("\n") == 1
    monkeypatch.setattr(cli, "PREDICT_CHUNK", 1)  # an unreadable file in a chunk of its own
    assert cli.main(["predict", str(run), str(tmp_path / "bad.png"), str(good), str(tmp_path / "gone.png")]) == 1
    assert capsys.readouterr().out.startswith(f"{good}: ")


def test_a_top_below_one_is_one_line(cifar_run, capsys):
    assert cli.main(["predict", str(cifar_run / "run"), "x.png", "--top", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "lrtrain: error: --top must be at least 1, got 0\n"


def test_export_normalize_of_a_file_without_the_record_takes_its_runs_data(cifar_run, tmp_path, capsys):
    run = cifar_run / "run"
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_bytes((run / "config.yaml").read_bytes())
    blob = torch.load(run / "compact.pt", weights_only=True)
    del blob["arch"]["normalize"]
    torch.save(blob, old / "compact.pt")
    for source, out in ((run, tmp_path / "new.pt"), (old, tmp_path / "old.pt")):
        assert cli.main(["export", str(source), "--format", "torchscript", "-o", str(out), "--normalize"]) == 0
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "old.pt"))(pixels),
                                   torch.jit.load(str(tmp_path / "new.pt"))(pixels))


def test_statistics_on_the_0_255_scale_or_an_empty_record_are_refused():
    model = lr.models.create("resnet20").eval()
    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    cifar_255 = {"mean": [125.3, 123.0, 113.9], "std": [63.0, 62.1, 66.7]}
    with pytest.raises(ValueError, match="divide them by 255"):
        predict(model, images, cifar_255)
    with pytest.raises(ValueError, match="divide them by 255"):
        lr.export.Normalized(model, cifar_255)
    with pytest.raises(ValueError, match="is not {'mean'"):
        predict(model, images, {})  # not "no normalization": a record that says nothing
    assert predict(model, images, None)[0].shape == (1, 5)


def test_read_images_takes_one_path_and_refuses_none(tmp_path):
    path = _png(tmp_path / "a.png", torch.full((3, 8, 8), 9, dtype=torch.uint8))
    assert torch.equal(read_images(str(path), 8), read_images([path], 8))
    assert read_images(path, 8).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="no image paths given"):
        read_images([], 8)
