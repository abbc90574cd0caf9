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
