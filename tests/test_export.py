"""Export of compact models: TorchScript, ONNX and state_dict files compute what the model computes."""

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import lrtrain as lr
from lrtrain import cli, export
from lrtrain.methods.lrpet import VanishedConv2d

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

SRC = str(Path(__file__).resolve().parents[1] / "src")
SIZE = (1, 3, 32, 32)
SUFFIX = {"torchscript": "ts", "exported": "pt2", "onnx": "onnx", "state_dict": "pt"}


def _compact() -> torch.nn.Module:
    """A ResNet-20 with every kind of layer a compact model may hold: channel, spatial, decoupled and
    tucker2 low-rank convs, a low-rank classifier, a vanished conv, and dense layers."""
    torch.manual_seed(0)
    model = lr.factorize(lr.models.create("resnet20"), rank=lr.FlopsBudget(0.5), skip=["layer2.*", "layer3.0.*"])
    model.layer2[0].conv1 = lr.LowRankConv2d.from_dense(model.layer2[0].conv1, 8, "spatial")
    model.layer2[0].conv2 = lr.LowRankConv2d.from_dense(model.layer2[0].conv2, 3, "decoupled")
    model.layer2[1].conv1 = lr.LowRankConv2d.from_dense(model.layer2[1].conv1, (8, 12), "tucker2")
    model.layer2[1].conv2 = VanishedConv2d(model.layer2[1].conv2)
    model.fc = lr.LowRankLinear.from_dense(model.fc, 5)
    for m in model.modules():  # BN statistics that are not the identity, so they must be exported too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def compact_file(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    lr.save(_compact(), run / "compact.pt", model_name="resnet20", num_classes=10, input_size=list(SIZE))
    return run / "compact.pt"


def _inputs():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))  # another batch size


def _max_diff(a, b) -> float:
    return (torch.as_tensor(a).float() - b.float()).abs().max().item()


def test_torchscript_matches_the_model_on_another_batch_size(compact_file, tmp_path):
    model = lr.load(compact_file)
    export.export_torchscript(model, tmp_path / "m.pt", SIZE)
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    x = _inputs()
    with torch.no_grad():
        assert _max_diff(scripted(x), model(x)) < 1e-4


def test_exported_program_runs_any_batch_size_without_lrtrain_classes(compact_file, tmp_path):
    model = lr.load(compact_file)
    export.export_program(model, tmp_path / "m.pt2", SIZE)  # an example batch of 1
    program = torch.export.load(str(tmp_path / "m.pt2"))
    module = program.module()
    assert not any(type(m).__module__.startswith("lrtrain") for m in module.modules())  # plain aten graph
    with torch.no_grad():
        for x in (_inputs()[:1], _inputs()):
            assert _max_diff(module(x), model(x)) < 1e-4


def test_a_model_that_runs_at_one_batch_size_only_is_refused_in_one_line(tmp_path):
    class FixedBatch(nn.Module):  # flattens the whole batch into one row
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 4 * 4, 2)

        def forward(self, x):
            return self.fc(x.reshape(1, -1))

    with pytest.raises(ValueError, match=r"^torch.export could not capture the model with a batch dimension "
                                         r"that varies \(.+\): export torchscript or onnx instead$"):
        export.export_program(FixedBatch(), tmp_path / "m.pt2", (1, 3, 4, 4))
    assert not (tmp_path / "m.pt2").exists()


def test_onnx_matches_in_onnxruntime(compact_file, tmp_path):
    pytest.importorskip("onnx", reason="the onnx package is not installed (pip install onnx)")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime): "
                                                    "the exported file cannot be run here")
    model = lr.load(compact_file)
    export.export_onnx(model, tmp_path / "m.onnx", SIZE)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    x = _inputs()
    with torch.no_grad():
        assert _max_diff(session.run(None, {"images": x.numpy()})[0], model(x)) < 1e-4


def test_a_model_whose_forward_takes_more_than_the_images_exports_to_onnx_with_one_input(tmp_path):
    pytest.importorskip("onnx", reason="the onnx package is not installed (pip install onnx)")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x, scale: float = 2.0):
            return self.conv(x).mean((2, 3)) * scale

    torch.manual_seed(0)
    model = Scaled()
    export.export_onnx(model, tmp_path / "m.onnx", (1, 3, 8, 8))
    assert export.check_export(model, tmp_path / "m.onnx", "onnx", (1, 3, 8, 8)) < 1e-5  # fed the images alone


def test_state_dict_is_plain_tensors_that_fit_the_rebuilt_architecture(compact_file, tmp_path):
    model, arch = export.load_with_arch(compact_file)
    export.export_state_dict(model, tmp_path / "w.pt")
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    rebuilt = export.rebuild(arch).eval()
    rebuilt.load_state_dict(state)
    x = _inputs()
    with torch.no_grad():
        assert _max_diff(rebuilt(x), model(x)) == 0


@pytest.mark.parametrize("fmt", export.EXPORT_FORMATS)
def test_cli_exports_a_run_directory_and_checks_the_file(compact_file, tmp_path, capsys, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx", reason="the onnx package is not installed (pip install onnx)")
    out = tmp_path / f"model.{SUFFIX[fmt]}"
    assert cli.main(["export", str(compact_file.parent), "--format", fmt, "-o", str(out)]) == 0
    printed, said = capsys.readouterr().out.strip().splitlines()
    assert said == "input: normalization not recorded in this file (written by an older lrtrain)"
    assert printed.startswith(f"wrote {out} ({fmt}, example input 1x3x32x32;")
    if "not checked" not in printed:
        assert float(printed.rsplit(": ", 1)[1].rstrip(")")) < 1e-4
    assert out.stat().st_size > 0


def test_cli_exports_a_compact_file_with_another_input_size(compact_file, tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert cli.main(["export", str(compact_file), "--format", "torchscript", "-o", str(out),
                     "--input-size", "2", "3", "40", "40"]) == 0
    assert "example input 2x3x40x40" in capsys.readouterr().out
    with torch.no_grad():
        x = torch.randn(1, 3, 40, 40)
        assert _max_diff(torch.jit.load(str(out))(x), lr.load(compact_file)(x)) < 1e-4


def test_without_onnxruntime_the_export_says_it_was_not_checked(compact_file, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnx", reason="the onnx package is not installed (pip install onnx)")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    assert cli.main(["export", str(compact_file), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 0
    assert "not checked: onnxruntime is not installed" in capsys.readouterr().out


@pytest.mark.parametrize("case, message", [
    ("no_compact", "has no compact.pt: its run has not finished"),
    ("missing", "no such run directory, compact model or checkpoint"),
    ("checkpoint", "is neither an lrtrain checkpoint nor a compact model"),
    ("truncated", "cannot read compact model or checkpoint"),
    ("no_onnx", "ONNX export needs the onnx package: pip install onnx"),
])
def test_export_errors_are_one_line(compact_file, tmp_path, capsys, monkeypatch, case, message):
    source, fmt = str(compact_file), "torchscript"
    if case == "no_compact":
        source = str(tmp_path)
    elif case == "missing":
        source = str(tmp_path / "nothing.pt")
    elif case == "checkpoint":
        source = str(tmp_path / "step_000000001.pt")
        torch.save({"config": {}, "model": {}, "step": 1}, source)
    elif case == "truncated":
        source = str(tmp_path / "half.pt")
        Path(source).write_bytes(compact_file.read_bytes()[:5000])
    else:
        monkeypatch.setitem(sys.modules, "onnx", None)
        fmt = "onnx"
    assert cli.main(["export", source, "--format", fmt, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lrtrain: error: ") and message in err and err.count("\n") == 1


def test_a_compact_model_loads_in_a_fresh_process_without_the_training_code(compact_file, tmp_path):
    x = _inputs()
    with torch.no_grad():
        torch.save({"x": x, "y": lr.load(compact_file)(x)}, tmp_path / "io.pt")
    script = (
        "import sys, torch, lrtrain\n"
        f"model = lrtrain.load({str(compact_file)!r})\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)\n"
        "with torch.no_grad():\n"
        "    assert (model(io['x']) - io['y']).abs().max() < 1e-5\n"
        "print(sorted(m for m in sys.modules if m.startswith('lrtrain.train') or m.startswith('lrtrain.data')))\n"
    )
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"  # neither the trainer nor the data pipeline was imported


def _batch_norms(path, fmt) -> int:
    """The BatchNorm operations left in an exported file."""
    if fmt == "torchscript":
        return str(torch.jit.load(str(path)).inlined_graph).count("aten::batch_norm")
    return sum("batch_norm" in str(node.target) for node in torch.export.load(str(path)).graph.nodes)


@pytest.mark.parametrize("fmt", ["torchscript", "exported", "onnx"])
def test_cli_exports_with_batchnorm_folded_and_checks_against_the_unfolded_model(compact_file, tmp_path, capsys, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx", reason="the onnx package is not installed (pip install onnx)")
    out = tmp_path / f"folded.{SUFFIX[fmt]}"
    assert cli.main(["export", str(compact_file), "--format", fmt, "-o", str(out), "--fold-bn"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[0]
    assert printed.startswith(f"wrote {out} ({fmt}, BatchNorm folded, example input 1x3x32x32;")
    if "not checked" not in printed:
        assert float(printed.rsplit(": ", 1)[1].rstrip(")")) < 1e-4
    if fmt != "onnx":
        plain = tmp_path / f"plain.{SUFFIX[fmt]}"
        assert cli.main(["export", str(compact_file), "--format", fmt, "-o", str(plain)]) == 0
        # only the BN after the vanished conv (no conv to fold into) stays
        assert _batch_norms(plain, fmt) == 19 and _batch_norms(out, fmt) == 1


def test_an_exported_program_file_must_end_in_pt2(compact_file, tmp_path, capsys):
    out = tmp_path / "model.x"
    assert cli.main(["export", str(compact_file), "--format", "exported", "-o", str(out)]) == 2
    assert "an ExportedProgram file's name ends in .pt2 (torch.export.load refuses others)" in capsys.readouterr().err
    assert not out.exists()


def test_an_onnx_opset_the_exporter_cannot_use_is_one_line(compact_file, tmp_path, capsys):
    pytest.importorskip("onnx", reason="the onnx package is not installed (pip install onnx)")
    out = tmp_path / "model.onnx"
    assert cli.main(["export", str(compact_file), "--format", "onnx", "-o", str(out), "--opset", "99"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lrtrain: error: the ONNX exporter could not write the model at opset 99 (")
    assert err.count("\n") == 1 and "try another --opset" in err and not out.exists()


def test_cli_refuses_to_fold_into_a_state_dict(compact_file, tmp_path, capsys):
    assert cli.main(["export", str(compact_file), "--format", "state_dict", "-o", str(tmp_path / "w.pt"),
                     "--fold-bn"]) != 0
    assert "--fold-bn changes the architecture" in capsys.readouterr().err
    assert not (tmp_path / "w.pt").exists()
    assert cli.main(["export", str(compact_file), "--format", "torchscript", "-o", str(tmp_path / "w.pt"),
                     "--layout", "channels_last"]) != 0
    assert "--layout chooses how --deploy lays out the model" in capsys.readouterr().err
    assert not (tmp_path / "w.pt").exists()


@pytest.mark.parametrize("layout", [None, "channels_last", "contiguous"])
def test_cli_deploy_says_which_factorized_convs_it_kept_and_the_file_matches(compact_file, tmp_path, capsys,
                                                                              layout):
    out = tmp_path / "deployed.pt"
    chosen = ["--layout", layout] if layout else []
    assert cli.main(["export", str(compact_file), "--format", "torchscript", "-o", str(out), "--deploy",
                     *chosen]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"deploy ({layout}): " if layout else "deploy (")  # auto: whichever ran faster
    assert "factorized convs kept" in printed and "BatchNorm folded" in printed
    assert float(printed.strip().splitlines()[1].rsplit(": ", 1)[1].rstrip(")")) < 1e-4
    x = _inputs()
    with torch.no_grad():
        assert _max_diff(torch.jit.load(str(out))(x), lr.load(compact_file)(x)) < 1e-4


def test_a_half_precision_model_loads_in_its_dtype(tmp_path):
    model = _compact().to(torch.bfloat16)
    lr.save(model, tmp_path / "half.pt", model_name="resnet20", num_classes=10)
    loaded = lr.load(tmp_path / "half.pt")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    x = _inputs().to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_a_file_of_another_format_is_refused(compact_file, tmp_path):
    blob = torch.load(compact_file, weights_only=True)
    blob["format"] = 99
    torch.save(blob, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="of format 99; this version of lrtrain reads format 1"):
        lr.load(tmp_path / "future.pt")


def test_a_conv_with_another_padding_mode_or_string_padding_is_rebuilt_as_it_was(tmp_path):
    torch.manual_seed(0)
    model = lr.models.create("resnet20").eval()
    model.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1, bias=False, padding_mode="reflect")
    model.layer1[0].conv1 = torch.nn.Conv2d(16, 16, 3, padding="same", bias=False)
    lr.save(model, tmp_path / "m.pt", model_name="resnet20", num_classes=10)
    loaded = lr.load(tmp_path / "m.pt")
    assert loaded.conv1.padding_mode == "reflect" and loaded.layer1[0].conv1.padding == "same"
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def test_save_refuses_a_name_that_does_not_rebuild_the_model(tmp_path):
    compact = lr.factorize(lr.models.create("resnet20"), rank="flops:0.5")
    with pytest.raises(ValueError, match=r"save: CifarResNet is not models.create\('resnet56', num_classes=10\) "
                                         r"with its low-rank layers \(model vs that\): missing: layer1.3"):
        lr.save(compact, tmp_path / "m.pt", "resnet56", 10)
    assert not (tmp_path / "m.pt").exists()
    lr.save(compact, tmp_path / "m.pt", "resnet20", 10)
    torch.testing.assert_close(lr.load(tmp_path / "m.pt")(torch.ones(1, 3, 32, 32)),
                               compact.eval()(torch.ones(1, 3, 32, 32)))
    own = lr.factorize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)), rank=2,
                       input_size=(1, 3, 8, 8))  # a model of one's own: not rebuilt by any registry name
    with pytest.raises(ValueError, match=r"save: 'mine' is not a registry model name .*register_model"):
        lr.save(own, tmp_path / "o.pt", "mine", 10)
    with pytest.raises(ValueError, match=r"0: the registry model has no 0; .*torch.save the whole module"):
        lr.save(own, tmp_path / "o.pt", "resnet20", 10)  # was an AttributeError
    assert not (tmp_path / "o.pt").exists()


def test_save_refuses_classes_that_a_factorized_classifier_does_not_have(tmp_path):
    model = lr.models.create("resnet20", num_classes=10)
    model.fc = lr.LowRankLinear(64, 10, rank=4)
    with pytest.raises(ValueError, match=r"num_classes=100\) .*fc: out_features 10 vs 100"):
        lr.save(model, tmp_path / "m.pt", "resnet20", 100)
    assert not (tmp_path / "m.pt").exists()
    lr.save(model, tmp_path / "m.pt", "resnet20", 10)
    assert lr.load(tmp_path / "m.pt")(torch.ones(2, 3, 32, 32)).shape == (2, 10)


def test_save_refuses_a_model_that_would_load_as_another_function_or_not_at_all(tmp_path):
    import torchvision

    model = lr.models.create("resnet18", num_classes=10)
    model.relu = nn.GELU()  # the same weights, another function
    lr.factorize(model, rank="flops:0.6", input_size=(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"relu: GELU vs ReLU .*register it with lrtrain.models.register_model"):
        lr.save(model, tmp_path / "m.pt", "resnet18", 10)
    foreign = lr.factorize(torchvision.models.mobilenet_v3_small(num_classes=10), rank="flops:0.6",
                           input_size=(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"not models.create\('mobilenet_v2', num_classes=10\) .*: "
                                         r"features\.\d+\..*: the registry model has no features"):
        lr.save(foreign, tmp_path / "m.pt", "mobilenet_v2", 10)
    assert not (tmp_path / "m.pt").exists()


NORMALIZE = {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}


@pytest.mark.parametrize("fmt", ["torchscript", "exported", "onnx"])
def test_normalize_builds_the_recorded_input_normalization_into_the_export(compact_file, tmp_path, capsys, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx", reason="the onnx package is not installed (pip install onnx)")
    source = tmp_path / "compact.pt"
    lr.save(lr.load(compact_file), source, model_name="resnet20", num_classes=10, input_size=list(SIZE),
            normalize=NORMALIZE)
    out = tmp_path / f"m.{SUFFIX[fmt]}"
    assert cli.main(["export", str(source), "--format", fmt, "-o", str(out), "--normalize"]) == 0
    wrote, said = capsys.readouterr().out.strip().splitlines()
    assert float(wrote.rsplit(": ", 1)[1].rstrip(")")) < 1e-4 or "not checked" in wrote
    assert said == "the exported model normalizes its input itself: give it RGB images scaled to 0-1"
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))  # RGB in 0-1
    mean, std = (torch.tensor(NORMALIZE[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        expected = lr.load(source)((pixels - mean) / std)
    if fmt == "torchscript":
        got = torch.jit.load(str(out))(pixels)
    elif fmt == "exported":
        got = torch.export.load(str(out)).module()(pixels)
    else:
        onnxruntime = pytest.importorskip("onnxruntime")
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"images": pixels.numpy()})[0])
    assert _max_diff(got, expected) < 1e-4
    # without --normalize the export says what input the model expects
    assert cli.main(["export", str(source), "--format", fmt, "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        "input: RGB scaled to 0-1, then (x - mean) / std per channel, mean [0.4900, 0.4800, 0.4500], "
        "std [0.2500, 0.2400, 0.2600] (--normalize builds it into the exported model)")


@pytest.mark.parametrize("case, message", [
    ("state_dict", "a state_dict holds weights only: it cannot carry the input normalization"),
    ("data_dir", "--data-dir tells --normalize where an older file's run data are: add --normalize"),
    ("unrecorded", "does not record its input normalization (written by an older lrtrain), and no config.yaml of "
                   "its run beside it says what it was trained on"),
])
def test_normalize_errors_are_one_line(compact_file, tmp_path, capsys, case, message):
    source = compact_file
    if case == "state_dict":
        source = tmp_path / "compact.pt"
        lr.save(lr.load(compact_file), source, model_name="resnet20", num_classes=10, normalize=NORMALIZE)
    fmt = "state_dict" if case == "state_dict" else "torchscript"
    flags = ["--data-dir", str(tmp_path / "none")] + ([] if case == "data_dir" else ["--normalize"])
    assert cli.main(["export", str(source), "--format", fmt, "-o", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lrtrain: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_normalized_wraps_a_model_and_refuses_a_malformed_record(compact_file):
    model = torch.nn.Conv2d(3, 2, 1)
    net = export.Normalized(model, NORMALIZE)
    x = torch.rand(2, 3, 4, 4)
    mean, std = (torch.tensor(NORMALIZE[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    torch.testing.assert_close(net(x), model((x - mean) / std))
    with pytest.raises(ValueError, match="needs 3 means and 3 positive stds"):
        export.Normalized(model, {"mean": [0.5], "std": [1.0]})
    half = torch.nn.Conv2d(3, 2, 1).to(torch.bfloat16)  # a model saved in bf16 takes bf16 input
    out = export.Normalized(half, NORMALIZE)(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, half(((x - mean) / std).to(torch.bfloat16)))
    with pytest.raises(ValueError, match=r"input normalization \{'mean': \[1\]\} is not"):
        lr.save(lr.load(compact_file), "never.pt", model_name="resnet20", num_classes=10, normalize={"mean": [1]})


def test_loading_or_describing_a_model_draws_no_random_numbers(compact_file):
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    lr.load(compact_file)
    export.base_modules("resnet20", 10)
    assert torch.equal(torch.rand(3), expected)


def test_load_takes_any_spelling_of_the_cpu_and_names_a_device_the_machine_lacks(compact_file, monkeypatch):
    x = _inputs()
    with torch.no_grad():
        expected = lr.load(compact_file)(x)
        for device in ("cpu:0", torch.device("cpu", 0)):
            assert torch.equal(lr.load(compact_file, map_location=device)(x), expected)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="map_location 'cuda': this machine has no CUDA device"):
        lr.load(compact_file, map_location="cuda")
    with pytest.raises(ValueError, match="map_location 'gpu' is not a device"):
        lr.load(compact_file, map_location="gpu")


def test_a_float64_model_exported_in_float32_is_said(tmp_path):
    """Exports hold float32 models: a bf16 model's weights convert exactly, a float64 model's are rounded,
    which was silent (and the check, against the float32 copy the file holds, showed 0)."""
    torch.manual_seed(0)
    model = lr.factorize(lr.models.create("resnet20"), rank="flops:0.5").eval()
    with pytest.warns(UserWarning, match="the model is float64; the file holds it in float32"):
        export.export(model.double(), tmp_path / "m.ts", "torchscript")
    assert next(torch.jit.load(str(tmp_path / "m.ts")).parameters()).dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a bf16 model converts exactly: nothing to say
        export.export(model.bfloat16(), tmp_path / "b.ts", "torchscript")
