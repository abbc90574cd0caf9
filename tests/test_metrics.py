import doctest
import statistics
import types

import pytest
import torch
from torch import nn

from lrtrain import metrics, models
from lrtrain.metrics import count, flop_counter_macs, latency, latency_ratio, trace_shapes


class Factorized(nn.Module):
    """A container of two small convs, the shape of a low-rank conv (c -> r 3×3, r -> n 1×1)."""

    def __init__(self, c, r, n, stride=1):
        super().__init__()
        self.a = nn.Conv2d(c, r, 3, stride, 1, bias=False)
        self.b = nn.Conv2d(r, n, 1)

    def forward(self, x):
        return self.b(self.a(x))


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.f = Factorized(8, 2, 16, stride=2)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.bn(self.f(self.stem(x)))
        return self.head(x.mean((2, 3)))


# MACs as the papers report them (MobileNetV2: "300M multiply-adds").
PAPER_MACS = {"resnet20": 40.8e6, "resnet56": 125e6, "vgg16": 313e6, "resnet18": 1.82e9,
              "resnet50": 4.1e9, "mobilenet_v2": 300e6}


@pytest.mark.parametrize("name", list(PAPER_MACS))
def test_macs_match_papers_and_flop_counter(name):
    model = models.create(name, num_classes=None)  # each builder's default: 10 or 1000 classes
    size = models.default_input_size(name)
    macs = count(model, size).flops
    assert macs == pytest.approx(PAPER_MACS[name], rel=0.02)
    assert macs == pytest.approx(flop_counter_macs(model, size), rel=0.01)


def test_resnet20_layers():
    model = models.create("resnet20")
    c = count(model)
    expected = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert set(c.layers) == expected and len(expected) == 20
    assert c.params == sum(p.numel() for p in model.parameters())
    assert c.flops == sum(layer.flops for layer in c.layers.values())
    first = c.layers["layer1.0.conv1"]
    assert (first.kind, first.in_shape, first.out_shape) == ("conv", (1, 16, 32, 32), (1, 16, 32, 32))
    assert first.flops == 16 * 16 * 9 * 32 * 32 and first.params == 16 * 16 * 9
    assert c.layers["layer2.0.conv1"].out_shape == (1, 32, 16, 16)
    fc = c.layers["fc"]
    assert (fc.kind, fc.in_shape, fc.flops, fc.params) == ("linear", (1, 64), 640, 650)


def test_container_of_small_convs_is_sum_of_leaves():
    c = count(TinyNet(), (1, 3, 16, 16))
    assert set(c.layers) == {"stem", "f.a", "f.b", "head"}
    assert c.layers["f.a"].flops == 8 * 8 * (2 * 8 * 9)  # 8×8 output after stride 2
    assert c.layers["f.b"].flops == 8 * 8 * (16 * 2)
    assert c.layers["f.b"].params == 16 * 2 + 16
    assert c.flops == 16 * 16 * 8 * 27 + 8 * 8 * 2 * (8 * 9 + 16) + 16 * 5


def test_per_sample_and_batch_invariant():
    model = TinyNet()
    one = count(model, (1, 3, 16, 16))
    four = count(model, (4, 3, 16, 16))
    assert one.flops == four.flops
    assert four.layers["f.a"].in_shape == (4, 8, 16, 16)
    assert flop_counter_macs(model, (4, 3, 16, 16)) == flop_counter_macs(model, (1, 3, 16, 16))


def test_grouped_conv_and_linear_on_sequence():
    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw = nn.Conv2d(4, 8, 3, padding=1, groups=4)
            self.proj = nn.Linear(8, 6)

        def forward(self, x):
            return self.proj(self.dw(x).flatten(2).transpose(1, 2))  # (N, H·W, C)

    model = Mixer()
    c = count(model, (2, 4, 5, 5))
    assert c.layers["dw"].flops == 8 * 25 * 1 * 9
    assert c.layers["proj"].flops == 25 * 8 * 6
    assert c.flops == flop_counter_macs(model, (2, 4, 5, 5))


def test_module_called_twice_counts_both_calls():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1, bias=False)

        def forward(self, x):
            return self.conv(self.conv(x))

    c = count(Twice(), (1, 3, 4, 4))
    assert c.layers["conv"].flops == 2 * 16 * 9 and c.params == 9


def test_trace_shapes():
    shapes = trace_shapes(models.create("resnet20"), (2, 3, 32, 32))
    assert shapes["conv1"] == ((2, 3, 32, 32), (2, 16, 32, 32))
    assert shapes["layer3.0.conv1"] == ((2, 32, 16, 16), (2, 64, 8, 8))
    assert shapes["fc"] == ((2, 64), (2, 10))


def test_modes_restored_and_hooks_removed():
    model = TinyNet().train()
    model.f.eval()  # a partly frozen model keeps its mix of modes
    count(model, (1, 3, 8, 8))
    flop_counter_macs(model, (1, 3, 8, 8))
    assert model.training and model.stem.training and model.bn.training
    assert not model.f.training and not model.f.a.training
    assert all(not m._forward_hooks for m in model.modules())
    model.eval()
    count(model, (1, 3, 8, 8))
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("size", [(3, 32, 32), (1, 3, 0, 32), (1, 3, 32.0, 32), (1, 3, 32, 32, 1),
                                  "1x3x32x32"])
def test_bad_input_size_rejected(size):
    with pytest.raises(ValueError, match="input_size") as info:
        count(TinyNet(), size)
    assert repr(size) in str(info.value)


def test_failing_forward_names_size_and_error():
    model = models.create("resnet20").train()
    with pytest.raises(ValueError) as info:
        count(model, (1, 1, 32, 32))
    msg = str(info.value)
    assert "(1, 1, 32, 32)" in msg and "channels" in msg
    assert isinstance(info.value.__cause__, RuntimeError)
    assert model.training and all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match=r"\(1, 1, 32, 32\)"):
        flop_counter_macs(model, (1, 1, 32, 32))


def test_out_of_memory_is_not_called_an_input_size_mistake():
    class Hungry(nn.Module):
        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(torch.OutOfMemoryError, match="2.00 GiB"):
        count(Hungry(), (1, 3, 32, 32))


def test_follows_model_dtype():
    c = count(TinyNet().double(), (1, 3, 8, 8))
    assert c.layers["stem"].flops == 64 * 8 * 27


def test_latency_restores_state():
    model = TinyNet().train()
    threads = torch.get_num_threads()
    t = latency(model, (2, 3, 16, 16), warmup=1, iters=3, threads=1, device="cpu")
    assert 0 < t < 1
    assert torch.get_num_threads() == threads and model.training
    with pytest.raises(ValueError, match="iters"):
        latency(model, iters=0)


class _Ticker(nn.Module):
    """A forward pass that advances a fake clock by its next duration (cycled) and logs its turn, so the
    timing is exact whatever else the machine does."""

    def __init__(self, name, durations, clock, log):
        super().__init__()
        self.name, self.durations, self.clock, self.log = name, durations, clock, log
        self.scale = nn.Parameter(torch.ones(1))
        self.calls = 0

    def forward(self, x):
        self.clock[0] += self.durations[self.calls % len(self.durations)]
        self.calls += 1
        self.log.append(self.name)
        return x * self.scale


def test_latency_ratio_takes_turns_and_divides_the_medians(monkeypatch):
    """On a fake clock: the passes alternate, warm-up passes are not timed, and the ratio is that of the
    medians (an outlier pass moves a mean, not a median)."""
    clock, log = [0.0], []
    monkeypatch.setattr(metrics, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    slow_times = [5.0, 0.02, 0.9, 0.02, 0.03, 0.021]  # the first pass is the warm-up
    fast_times = [7.0, 0.005, 0.004, 0.5, 0.006, 0.005]
    slow = _Ticker("slow", slow_times, clock, log).train()
    fast = _Ticker("fast", fast_times, clock, log).eval()
    ratio = latency_ratio(slow, fast, (1, 3, 4, 4), warmup=1, iters=5, threads=1)
    assert ratio == pytest.approx(statistics.median(slow_times[1:]) / statistics.median(fast_times[1:]),
                                  rel=1e-9)
    assert ratio != pytest.approx(statistics.mean(slow_times[1:]) / statistics.mean(fast_times[1:]), rel=0.1)
    assert log == ["slow", "fast"] * 6  # in turns, warm-up included
    assert slow.calls == fast.calls == 6 and slow.training and not fast.training
    with pytest.raises(ValueError, match="iters"):
        latency_ratio(slow, fast, iters=0)


def test_docstring_examples_run():
    assert doctest.testmod(metrics).failed == 0


def test_counts_print_as_one_line_of_totals():
    # ResNet-20: 19 convs and the classifier, 40.55 M MACs, 0.27 M parameters (He et al.)
    assert str(count(models.create("resnet20"))) == "40.55 M MACs, 0.270 M params (20 conv/linear layers)"
