"""`lr.deploy`: each factorized conv kept only where it measures faster than its dense form, same outputs."""

import pytest
import torch
from torch import nn

import lrtrain as lr
from lrtrain import export
from lrtrain.layers import LowRankConv2d
from test_fold import _random_statistics


def _compact() -> nn.Module:
    torch.manual_seed(0)
    return _random_statistics(lr.factorize(lr.models.create("resnet20"), rank="flops:0.45"))


def test_layers_measured_slower_factorized_go_back_dense_and_the_outputs_stay():
    compact = _compact()
    wide = lambda x: x.shape[1] >= 32  # noqa: E731  a timer under which only the wider layers gain

    def timer(dense, factorized, x):
        return (1.0, 0.5) if wide(x) else (1.0, 2.0)

    deployed, choices = lr.deploy(compact, input_size=(2, 3, 32, 32), timer=timer)
    lowrank = {n for n, m in compact.named_modules() if isinstance(m, LowRankConv2d)}
    assert {c.name for c in choices} == lowrank
    for c in choices:
        kept = deployed.get_submodule(c.name)
        assert c.input_shape[0] == 2 and c.factorized == (c.input_shape[1] >= 32)
        assert isinstance(kept, LowRankConv2d) == c.factorized and (c.factorized or type(kept) is nn.Conv2d)
        assert (c.dense_ms, c.factorized_ms) == ((1000.0, 500.0) if c.factorized else (1000.0, 2000.0))
    assert any(c.factorized for c in choices) and not all(c.factorized for c in choices)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules()) and not deployed.training
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = compact(x)
        torch.testing.assert_close(deployed(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert lr.count(compact).flops < lr.count(deployed).flops < lr.count(lr.models.create("resnet20")).flops


def test_deploy_measures_for_real_and_the_result_saves(tmp_path):
    compact = _compact()
    deployed, choices = lr.deploy(compact, input_size=(4, 3, 32, 32), rounds=1, iters=1, fold_bn=False)
    assert choices and all(c.dense_ms > 0 and c.factorized_ms > 0 for c in choices)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in deployed.modules()) == 19  # not folded when asked not to
    export.save(deployed, tmp_path / "d.pt", "resnet20", 10)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(export.load(tmp_path / "d.pt")(x), deployed(x))
    with pytest.raises(ValueError, match="rounds >= 1"):
        lr.deploy(compact, rounds=0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_layer_put_back_dense_is_laid_out_like_the_models_activations(channels_last):
    torch.manual_seed(0)
    compact = lr.factorize(lr.models.create("resnet20"), rank="flops:0.45", scheme="tucker2").eval()  # 1×1 first
    if channels_last:
        compact = compact.to(memory_format=torch.channels_last)
    layouts = []

    def timer(dense, factorized, x):
        layouts.append(dense.weight.is_contiguous(memory_format=torch.channels_last) and not dense.weight.is_contiguous())
        return 1.0, 2.0  # every layer back dense

    lr.deploy(compact, input_size=(2, 3, 32, 32), timer=timer, fold_bn=False)
    assert layouts and all(flag == channels_last for flag in layouts)


@pytest.mark.parametrize("channels_last_faster", [False, True])
def test_auto_layout_keeps_the_layout_measured_faster_and_the_outputs(channels_last_faster):
    compact = _compact()
    calls = []

    def timer(first, second, x):  # the second form (factorized; or the channels_last model) faster or not
        calls.append(isinstance(first, type(compact)))
        return (1.0, 0.5) if channels_last_faster else (0.5, 1.0)

    deployed, choices = lr.deploy(compact, input_size=(2, 3, 32, 32), timer=timer, layout="auto")
    assert calls.count(True) == 1 and len(calls) == 1 + 2 * len(choices)  # each layer in both layouts, then the models
    assert all(c.factorized == channels_last_faster for c in choices)
    k3 = [m.weight for m in deployed.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    cl = [w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in k3]
    assert k3 and cl == [channels_last_faster] * len(k3)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = compact.eval()(x)
        torch.testing.assert_close(deployed(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    with pytest.raises(ValueError, match="layout must be one of"):
        lr.deploy(compact, layout="nhwc")


def test_channels_last_leaves_tensors_that_are_not_4d_as_they_are():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 2)).eval()
    model.register_buffer("volume", torch.randn(2, 3, 4, 5, 6))  # 5-D: Module.to(memory_format=...) refuses it
    deployed, choices = lr.deploy(model, input_size=(2, 3, 4, 4), layout="channels_last")
    assert choices == [] and lr.deployment.layout_of(deployed) == "channels_last"
    assert deployed.volume.is_contiguous() and torch.equal(deployed.volume, model.volume)
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x))


def test_progress_counts_every_layer_of_both_layouts_on_a_terminal(monkeypatch):
    import io

    compact = _compact()
    terminal = io.StringIO()
    terminal.isatty = lambda: True
    monkeypatch.setattr("sys.stderr", terminal)
    timer = lambda first, second, x: (1.0, 2.0)  # noqa: E731
    layers = sum(isinstance(m, LowRankConv2d) for m in compact.modules())
    lr.deploy(compact, input_size=(2, 3, 32, 32), timer=timer, layout="auto", progress=True)
    assert "deploy: timing layers:   0%|" in terminal.getvalue() and f"0/{2 * layers}" in terminal.getvalue()
    terminal.truncate(0)
    lr.deploy(compact, input_size=(2, 3, 32, 32), timer=timer)  # no progress asked: no bar
    assert terminal.getvalue() == ""
