"""Properties over random conv geometries (hypothesis): exactness at full rank, rank bounds after a
truncation, grouped convs refused, and MACs counted three ways that must agree."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from lrtrain import LowRankConv2d
from lrtrain.metrics import count, flop_counter_macs
from lrtrain.schemes import SCHEMES, ConvGeometry, get_scheme

FAST = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def convs(draw, grouped=False):
    """(conv in float64, input height, input width): any kernel, stride, padding and dilation whose output
    is at least 1×1; ``grouped``: groups > 1."""
    if grouped:
        groups = draw(st.integers(2, 4))
        c, n = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    else:
        groups, c, n = 1, draw(st.integers(1, 6)), draw(st.integers(1, 6))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    # The smallest input a kernel of this reach fits, plus a little.
    h = max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]) + draw(st.integers(0, 5))
    w = max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1]) + draw(st.integers(0, 5))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    conv = nn.Conv2d(c, n, (kh, kw), stride, padding, dilation, groups=groups, bias=draw(st.booleans()))
    return conv.double(), h, w


def _input(conv, h, w, batch=2):
    return torch.randn(batch, conv.in_channels, h, w, dtype=torch.float64)


@FAST
@given(convs(), st.sampled_from(sorted(SCHEMES)))
def test_full_rank_is_exact_in_float64_for_every_scheme(conv_hw, scheme):
    conv, h, w = conv_hw
    full = get_scheme(scheme).max_rank(ConvGeometry.of(conv))
    low = LowRankConv2d.from_dense(conv, full, scheme)
    x = _input(conv, h, w)
    ref = conv(x)
    scale = 1 + ref.abs().max().item()
    assert (low(x) - ref).abs().max().item() < 1e-9 * scale
    dense = low.to_dense()
    assert (dense.weight - conv.weight).abs().max().item() < 1e-9 * scale
    assert (dense(x) - ref).abs().max().item() < 1e-9 * scale


def _matrix_ranks(scheme: str, weight: torch.Tensor):
    """The ranks a scheme truncates: of its matrix form (one per filter for decoupled), or of the two
    mode unfoldings for tucker2."""
    w = weight.detach()
    if scheme == "tucker2":
        n, c = w.shape[:2]
        return (int(torch.linalg.matrix_rank(w.transpose(0, 1).reshape(c, -1))),
                int(torch.linalg.matrix_rank(w.reshape(n, -1))))
    return int(torch.linalg.matrix_rank(get_scheme(scheme).to_matrix(w)).max())


@FAST
@given(convs(), st.sampled_from(sorted(SCHEMES)), st.data())
def test_a_truncation_to_rank_r_has_rank_at_most_r(conv_hw, scheme, data):
    conv, _, _ = conv_hw
    top = get_scheme(scheme).max_rank(ConvGeometry.of(conv))
    if scheme == "tucker2":
        rank = (data.draw(st.integers(1, top[0])), data.draw(st.integers(1, top[1])))
        got = _matrix_ranks(scheme, LowRankConv2d.from_dense(conv, rank, scheme).to_dense().weight)
        assert got[0] <= rank[0] and got[1] <= rank[1]
    else:
        rank = data.draw(st.integers(1, top))
        low = LowRankConv2d.from_dense(conv, rank, scheme)
        assert _matrix_ranks(scheme, low.to_dense().weight) <= rank
        assert low.rank == rank


@FAST
@given(convs(grouped=True), st.sampled_from(sorted(SCHEMES)))
def test_grouped_convs_are_refused_with_the_reason(conv_hw, scheme):
    conv, _, _ = conv_hw
    kind = "depthwise" if conv.groups == conv.in_channels else "grouped"
    with pytest.raises(ValueError, match=rf"{kind} conv \(groups={conv.groups}\) cannot be factorized"):
        LowRankConv2d.from_dense(conv, 1, scheme)


def _analytic(conv: nn.Conv2d, h: int, w: int) -> int:
    """out_h·out_w·n·(c/groups)·kh·kw, the output size from the usual formula."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return oh * ow * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw


@FAST
@given(st.one_of(convs(), convs(grouped=True)), st.integers(1, 3))
def test_count_of_a_conv_matches_the_flop_counter_and_the_formula(conv_hw, batch):
    conv, h, w = conv_hw
    size = (batch, conv.in_channels, h, w)
    counted = count(conv, size)
    assert counted.flops == flop_counter_macs(conv, size) == _analytic(conv, h, w)
    assert counted.params == sum(p.numel() for p in conv.parameters())


@FAST
@given(convs(), st.sampled_from(sorted(SCHEMES)), st.data())
def test_count_of_a_low_rank_conv_matches_its_own_formula_and_the_flop_counter(conv_hw, scheme, data):
    conv, h, w = conv_hw
    top = get_scheme(scheme).max_rank(ConvGeometry.of(conv))
    rank = (tuple(data.draw(st.integers(1, t)) for t in top) if isinstance(top, tuple)
            else data.draw(st.integers(1, top)))
    low = LowRankConv2d.from_dense(conv, rank, scheme)
    size = (1, conv.in_channels, h, w)
    counted = count(low, size)
    assert counted.flops == low.flops((h, w)) == flop_counter_macs(low, size)
    assert counted.flops == sum(_analytic(f, *hw) for f, hw in zip(low.factors, _factor_inputs(low, h, w)))


def _factor_inputs(low: LowRankConv2d, h: int, w: int):
    """The spatial size each factor conv of the chain sees."""
    sizes = []
    x = torch.zeros(1, low.geometry.in_channels, h, w, dtype=torch.float64)
    for f in low.factors:
        sizes.append(tuple(x.shape[-2:]))
        x = f(x)
    return sizes
