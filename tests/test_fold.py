"""Folding BatchNorm into convs for inference: same outputs, no BN left where one can go, savable."""

import pytest
import torch
from torch import nn

import lrtrain as lr
from lrtrain import export
from lrtrain.layers import LowRankConv2d


def _random_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


def _bns(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "vgg16"])
def test_a_folded_dense_model_computes_the_same_without_any_batchnorm(name):
    torch.manual_seed(0)
    model = _random_statistics(lr.models.create(name, num_classes=10))
    folded = lr.fold_batchnorm(model)
    assert _bns(folded) == 0 and _bns(model) > 0 and not folded.training
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    before, after = lr.count(model), lr.count(folded)  # MACs count convs only; a BN's 4 vectors become a bias
    assert after.flops == before.flops and after.params < before.params


@pytest.mark.parametrize("scheme", ["channel", "spatial", "tucker2"])
def test_a_compact_model_folds_into_its_last_factors_and_saves_and_loads_folded(scheme, tmp_path):
    torch.manual_seed(0)
    compact = _random_statistics(lr.factorize(lr.models.create("resnet20"), rank="ratio:0.5", scheme=scheme))
    folded = lr.fold_batchnorm(compact)
    assert _bns(folded) == 0
    lowrank = [m for m in folded.modules() if isinstance(m, LowRankConv2d)]
    assert lowrank and all(m.geometry.bias and m.factors[-1].bias is not None for m in lowrank)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = compact(x)
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
        export.save(folded, tmp_path / "folded.pt", "resnet20", 10)
        torch.testing.assert_close(export.load(tmp_path / "folded.pt")(x), folded(x))


@pytest.mark.parametrize("traceable", [True, False])
def test_a_batchnorm_that_is_not_the_convs_only_consumer_stays(traceable, monkeypatch):
    from lrtrain import bn_pairs

    if not traceable:  # the forward-pass pairing, for models torch.fx cannot trace
        monkeypatch.setattr(bn_pairs._ConvLeafTracer, "trace", lambda self, root: 1 / 0)

    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.other = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(3, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the conv's output is used twice: folding would change the second use

    model = _random_statistics(nn.Sequential(Branch(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)))
    folded = lr.fold_batchnorm(model, input_size=(1, 3, 8, 8))
    assert isinstance(folded[0].bn, nn.BatchNorm2d) and isinstance(folded[2], nn.Identity)
    assert folded[1].bias is not None and model[1].bias is not None and _bns(model) == 2  # the original is untouched
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)


def test_batch_statistics_batchnorm_is_not_folded_and_inplace_folds_the_model_itself():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4, track_running_stats=False),
                          nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4))
    folded = lr.fold_batchnorm(_random_statistics_safe(model), input_size=(1, 3, 8, 8), inplace=True)
    assert folded is model
    assert isinstance(model[1], nn.BatchNorm2d) and isinstance(model[3], nn.Identity)
    assert model[0].bias is None and model[2].bias is not None


def _random_statistics_safe(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.track_running_stats:
                m.running_var.fill_(2.0)
    return model.eval()


class _SharedBN(nn.Module):
    """One BN normalizing two convs' outputs, and another BN also applied to the input itself."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, padding=1)
        self.shared, self.twice = nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.shared(self.a(x)) + self.shared(self.b(x)) + self.twice(self.c(x)) + self.twice(x)


@pytest.mark.parametrize("traceable", [True, False])
def test_a_batchnorm_called_more_than_once_is_never_folded(traceable, monkeypatch):
    from lrtrain import bn_pairs

    if not traceable:  # the forward-pass pairing, for models torch.fx cannot trace
        monkeypatch.setattr(bn_pairs._ConvLeafTracer, "trace", lambda self, root: 1 / 0)
    model = _random_statistics(_SharedBN())
    assert bn_pairs.conv_bn_pairs(model, (1, 4, 6, 6)) == {}
    folded = lr.fold_batchnorm(model, input_size=(1, 4, 6, 6))
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))
    assert _bns(folded) == 2


class _SharedWeight(nn.Module):
    """Two convs holding one weight tensor, each with a BN of its own."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.b.weight = self.a.weight
        self.bn1, self.bn2 = nn.BatchNorm2d(8), nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn1(self.a(x)) + self.bn2(self.b(x))


def test_convs_sharing_a_weight_each_fold_their_own_batchnorm():
    torch.manual_seed(0)
    model = _SharedWeight()
    for bn in (model.bn1, model.bn2):
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    model.eval()
    folded = lr.fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=0)


class _BranchOnConv(nn.Module):
    """Untraceable (a branch on a value) and the conv's output used where no graph shows it."""

    def __init__(self, how: str):
        super().__init__()
        self.how, self.conv, self.bn = how, nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        with torch.no_grad():
            self.conv.bias.fill_(5.0)  # its output is positive, its BN's output negative
            self.bn.running_mean.fill_(10.0)

    def forward(self, x):
        if x.abs().sum() < 0:  # never, but torch.fx cannot trace a branch on a value
            return x
        y = self.conv(x)
        if self.how == "branch":
            return self.bn(y) if y.mean() > 0 else -self.bn(y)
        return self.bn(y) * (y > 0)  # a use autograd records no edge for


@pytest.mark.parametrize("how", ["branch", "mask"])
def test_a_fold_a_forward_pass_cannot_see_is_checked_and_left_undone(how):
    model = _BranchOnConv(how).eval()
    with pytest.warns(UserWarning, match="cannot be traced by torch.fx, and folding its BatchNorms changed its "
                                         "outputs .*: it is left unfolded"):
        folded = lr.fold_batchnorm(model, input_size=(1, 3, 8, 8))
    assert _bns(folded) == 1
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))


def test_a_model_autograd_cannot_follow_is_still_paired_and_folded():
    class InPlaceInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            x = x.sub_(0.5)  # in place on the input: autograd refuses a leaf that requires grad
            return self.bn(self.conv(x)) if x.shape[0] > 0 else x

    model = _random_statistics(InPlaceInput())
    folded = lr.fold_batchnorm(model, input_size=(1, 3, 8, 8))
    assert _bns(folded) == 0
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x.clone()), model(x.clone()), rtol=1e-4, atol=1e-5)


def test_sync_and_frozen_batchnorms_pair_fold_and_rectify_like_batchnorm2d():
    import torchvision
    from torchvision.ops.misc import FrozenBatchNorm2d

    from lrtrain.bn_pairs import conv_bn_pairs

    torch.manual_seed(0)
    size = (1, 3, 32, 32)
    plain = conv_bn_pairs(torchvision.models.resnet18(num_classes=10), size)
    frozen = torchvision.models.resnet18(num_classes=10, norm_layer=FrozenBatchNorm2d).eval()
    for m in frozen.modules():
        if isinstance(m, FrozenBatchNorm2d):  # statistics other than the identity map it starts as
            m.running_mean.normal_(), m.running_var.uniform_(0.5, 2), m.weight.normal_(), m.bias.normal_()
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(torchvision.models.resnet18(num_classes=10))
    assert conv_bn_pairs(frozen, size) == plain == conv_bn_pairs(synced, size) and len(plain) == 20
    x = torch.randn(2, *size[1:])
    folded = lr.fold_batchnorm(frozen, size)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        expected = frozen(x)
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert len(lr.LRPET(synced, goal=0.5, period=1, input_size=size)._bns) == 20  # BN rectification for each
