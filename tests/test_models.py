import doctest
import math

import pytest
import torch
from torch import nn

from lrtrain import models
from lrtrain.models import registry
from lrtrain.models.cifar_resnet import PadShortcut


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_list_models_has_all_and_filters():
    names = models.list_models()
    for name in ["resnet20", "resnet32", "resnet56", "resnet110", "vgg16", "resnet18", "resnet50",
                 "mobilenet_v2"]:
        assert name in names
    assert names == sorted(names)
    assert models.list_models("vgg*") == ["vgg16"]
    assert models.list_models("resnet1*") == ["resnet110", "resnet110b", "resnet18"]


@pytest.mark.parametrize("name, expected", [("resnet20", 0.27e6), ("resnet56", 0.85e6),
                                            ("resnet110", 1.7e6), ("vgg16", 14.7e6)])
def test_param_counts_match_papers(name, expected):
    assert n_params(models.create(name)) == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("name", ["resnet20", "resnet32", "vgg16"])
def test_forward_shape_and_num_classes(name):
    model = models.create(name, num_classes=100)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_resnet_module_names_and_option_a_shortcuts():
    model = models.create("resnet56")
    names = dict(model.named_modules())
    for name in ["conv1", "bn1", "layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2", "layer1.0.bn2",
                 "layer3.8.conv2", "fc"]:
        assert name in names
    assert "layer3.9" not in names
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # Option A: the 54 block convs and the stem, none in the shortcuts.
    assert len(convs) == 55
    assert all(m.kernel_size == (3, 3) for m in convs)
    assert isinstance(model.fc, nn.Linear) and model.fc.in_features == 64



@pytest.mark.parametrize("depth", [20, 32, 56, 110])
def test_option_b_resnets_add_a_1x1_conv_and_bn_on_the_two_shape_changing_shortcuts(depth):
    a, b = models.create(f"resnet{depth}"), models.create(f"resnet{depth}b")
    extra = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)  # 1×1 conv weights and BN scale/shift, stages 2 and 3
    assert n_params(b) == n_params(a) + extra
    shortcuts = {n: m for n, m in b.named_modules() if n.endswith("shortcut.0")}
    assert sorted(shortcuts) == ["layer2.0.shortcut.0", "layer3.0.shortcut.0"]
    assert all(m.kernel_size == (1, 1) and m.stride == (2, 2) for m in shortcuts.values())
    assert b(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="shortcut must be one of A, B"):
        models.create(f"resnet{depth}", shortcut="C")


def test_pad_shortcut_subsamples_and_zero_pads_channels():
    x = torch.randn(2, 16, 8, 8)
    y = PadShortcut(2, 16)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()


def test_resnet_width():
    model = models.create("resnet20", width=4)
    assert model.layer3[0].conv2.out_channels == 16
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_resnet_rejects_bad_depth():
    with pytest.raises(ValueError, match="6n"):
        models.CifarResNet(21)


def test_kaiming_init_of_convs():
    """He init in fan-out mode (registry.init_conv_bn_): checked on widening convs (16→32, 32→64), whose
    fan-in std is √2 times the fan-out one, so the mode shows (≥ 4608 weights: the std is within ~1 %)."""
    torch.manual_seed(0)
    model = models.create("resnet20")
    for conv in (model.layer2[0].conv1, model.layer3[0].conv1):
        assert conv.out_channels == 2 * conv.in_channels
        k = conv.kernel_size[0] * conv.kernel_size[1]
        std = conv.weight.std().item()
        assert std == pytest.approx(math.sqrt(2 / (conv.out_channels * k)), rel=0.05)
        assert std != pytest.approx(math.sqrt(2 / (conv.in_channels * k)), rel=0.2)
    conv = model.layer3[1].conv1  # 64→64
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (conv.out_channels * 9)), rel=0.05)


def test_vgg16_layout():
    model = models.create("vgg16")
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.features) == 13
    assert model.classifier.in_features == 512 and model.classifier.out_features == 10


def test_torchvision_model_and_none_kwargs_dropped():
    model = models.create("resnet18", num_classes=None, zero_init_residual=None)
    assert model.fc.out_features == 1000  # the builder's default applies
    assert models.create("resnet18", num_classes=7).fc.out_features == 7


def test_default_input_size():
    assert models.default_input_size("resnet56") == (1, 3, 32, 32)
    assert models.default_input_size("vgg16") == (1, 3, 32, 32)
    for name in ["resnet18", "resnet50", "mobilenet_v2"]:
        assert models.default_input_size(name) == (1, 3, 224, 224)


def test_unknown_name_suggests_and_lists():
    with pytest.raises(ValueError) as info:
        models.create("resnet65")
    msg = str(info.value)
    assert "Did you mean 'resnet56'" in msg
    assert "vgg16" in msg and "mobilenet_v2" in msg
    with pytest.raises(ValueError, match="unknown model"):
        models.default_input_size("nope")


def test_register_model_with_and_without_arguments():
    @models.register_model
    def _tiny_a(num_classes=10):
        return nn.Linear(4, num_classes)

    @models.register_model(name="_tiny_b", input_size=(1, 3, 64, 64))
    def build_b(num_classes=10):
        return nn.Linear(4, num_classes)

    try:
        assert models.create("_tiny_a", num_classes=3).out_features == 3
        assert models.default_input_size("_tiny_a") == (1, 3, 32, 32)
        assert models.default_input_size("_tiny_b") == (1, 3, 64, 64)
        assert build_b().out_features == 10  # the decorator returns the builder itself
        with pytest.raises(ValueError, match="already registered"):
            models.register_model(name="_tiny_a")(build_b)
    finally:
        registry._REGISTRY.pop("_tiny_a", None)
        registry._REGISTRY.pop("_tiny_b", None)


def test_docstring_examples_run():
    assert doctest.testmod(registry).failed == 0
