import pytest
import torch
from torch import nn

from lrtrain import models
from lrtrain.bn_pairs import _pairs_from_forward, conv_bn_pairs


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it; in-place ReLU between conv2 and bn2."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        x = self.bn1(self.conv1(x))
        if x.sum() > 0:  # fx cannot branch on a traced value
            x = -x
        return self.bn2(torch.relu_(self.conv2(x)))


class Shared(nn.Module):
    """conv_a's output also feeds the residual sum; conv_b is called twice into different BNs."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv_b, self.bn_b1, self.bn_b2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.conv_c, self.bn_c = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        a = self.conv_a(x)
        x = self.bn_a(a) + a
        x = self.bn_b1(self.conv_b(x)) + self.bn_b2(self.conv_b(x))
        return self.bn_c(self.conv_c(x))


@pytest.mark.parametrize("name,size", [("resnet20", 32), ("resnet18", 32), ("vgg16", 32)])
def test_every_conv_of_the_standard_models_is_paired_with_its_own_bn(name, size):
    model = models.create(name)
    pairs = conv_bn_pairs(model)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(pairs) == sorted(convs)
    for conv, bn in pairs.items():
        assert model.get_submodule(bn).num_features == model.get_submodule(conv).out_channels
    if name == "resnet18":  # registered after bn2 of its block: module order would mis-pair it
        assert pairs["layer2.0.downsample.0"] == "layer2.0.downsample.1"
    assert _pairs_from_forward(model, (1, 3, size, size)) == pairs


def test_untraceable_model_falls_back_to_the_forward_pass_and_sees_in_place_ops():
    model = Untraceable()
    assert conv_bn_pairs(model, (1, 3, 8, 8)) == {"conv1": "bn1"}
    assert model.training  # the forward pass ran in eval mode and restored the mode


def test_conv_with_another_consumer_or_called_into_two_bns_is_not_paired():
    model = Shared()
    assert conv_bn_pairs(model) == {"conv_c": "bn_c"}
    # the forward-pass fallback sees the residual use of conv_a's output in the autograd graph
    assert _pairs_from_forward(model, (1, 4, 8, 8)) == {"conv_c": "bn_c"}


def test_forward_pass_pairing_leaves_a_conv_whose_use_autograd_cannot_show():
    class NoGradConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
            self.conv2, self.bn2 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            with torch.no_grad():  # no graph node: its consumers cannot be counted
                y = self.conv(x)
            return self.bn(y) + self.bn2(self.conv2(x))

    assert _pairs_from_forward(NoGradConv(), (1, 3, 8, 8)) == {"conv2": "bn2"}


def test_low_rank_layers_trace_with_fx_and_their_last_factor_pairs_with_the_bn():
    from lrtrain import LowRankConv2d

    torch.manual_seed(0)
    net = nn.Sequential(LowRankConv2d(8, 16, 3, 4, "tucker2", padding=1), nn.BatchNorm2d(16), nn.ReLU()).eval()
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(torch.fx.symbolic_trace(net)(x), net(x))  # the 1×1 factors' layout test is opaque
    assert conv_bn_pairs(net) == {"0.factors.2": "1"}
