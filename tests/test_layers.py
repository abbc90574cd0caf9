import pytest
import torch
from torch import nn

from lrtrain import LowRankConv2d, LowRankLinear, count, models
from lrtrain.layers import PointwiseConv2d
from lrtrain.schemes import ConvGeometry, get_scheme

GEOMETRIES = [  # (in, out, kernel, stride, padding, dilation)
    (6, 10, 3, 1, 1, 1),
    (8, 5, 3, 2, 1, 1),
    (4, 7, (3, 5), (2, 1), (1, 2), 1),
    (5, 6, 3, 1, 2, 2),
]


def _conv(geom, bias=True, seed=0):
    torch.manual_seed(seed)
    c, n, k, s, p, d = geom
    return nn.Conv2d(c, n, k, stride=s, padding=p, dilation=d, bias=bias).double()


@pytest.mark.parametrize("scheme", ["channel", "spatial", "decoupled", "tucker2"])
@pytest.mark.parametrize("geom", GEOMETRIES)
@pytest.mark.parametrize("bias", [True, False])
def test_full_rank_is_exact(scheme, geom, bias):
    conv = _conv(geom, bias)
    full = get_scheme(scheme).max_rank(ConvGeometry.of(conv))
    low = LowRankConv2d.from_dense(conv, full, scheme)
    x = torch.randn(2, conv.in_channels, 11, 9, dtype=torch.float64)
    assert (low(x) - conv(x)).abs().max() < 1e-8
    dense = low.to_dense()
    assert (dense(x) - conv(x)).abs().max() < 1e-8
    assert low.rank == full


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("geom", GEOMETRIES)
def test_lower_rank_reaches_eckart_young(scheme, geom):
    conv = _conv(geom)
    sch = get_scheme(scheme)
    S = torch.linalg.svdvals(sch.to_matrix(conv.weight.detach()))
    r = max(1, len(S) // 2)
    low = LowRankConv2d.from_dense(conv, r, scheme)
    err = (low.weight - conv.weight).square().sum()
    torch.testing.assert_close(err, S[r:].square().sum())
    assert torch.linalg.matrix_rank(sch.to_matrix(low.weight.detach())) == r
    # the function matches the truncated weight, and the bias is carried over
    x = torch.randn(2, conv.in_channels, 8, 8, dtype=torch.float64)
    ref = nn.functional.conv2d(x, low.weight, conv.bias, conv.stride, conv.padding, conv.dilation)
    torch.testing.assert_close(low(x), ref)


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_tucker2_below_full_rank_is_the_hosvd_truncation(geom):
    """Tucker-2 at (r_in, r_out) keeps the *leading* singular vectors of both unfoldings (HOSVD): the composed
    weight is W projected onto them along modes 0 and 1, and its error is within the HOSVD bound, the sum
    of the σ² both unfoldings discard. Computed here from torch.linalg.svd, not through lrtrain.linalg."""
    conv = _conv(geom)
    w = conv.weight.detach()
    n, c = w.shape[:2]
    r_in, r_out = max(1, c // 2), max(1, n // 2 + 1)  # unequal ranks, neither full
    U0, S0, _ = torch.linalg.svd(w.reshape(n, -1), full_matrices=False)  # mode 0: n × c·k²
    U1, S1, _ = torch.linalg.svd(w.transpose(0, 1).reshape(c, -1), full_matrices=False)  # mode 1: c × n·k²
    assert r_in < len(S1) and r_out < len(S0)
    Uo, Ui = U0[:, :r_out], U1[:, :r_in]
    want = torch.einsum("nchw,na,ma,cb,db->mdhw", w, Uo, Uo, Ui, Ui)
    low = LowRankConv2d.from_dense(conv, (r_in, r_out), "tucker2")
    assert low.rank == (r_in, r_out)
    torch.testing.assert_close(low.weight, want, atol=1e-10, rtol=1e-8)
    err = (low.weight - w).square().sum()
    assert err <= S0[r_out:].square().sum() + S1[r_in:].square().sum() + 1e-10
    assert err > 0  # truncated: the bound above is not met trivially by an exact copy
    x = torch.randn(2, c, 8, 8, dtype=torch.float64)
    ref = nn.functional.conv2d(x, want, conv.bias, conv.stride, conv.padding, conv.dilation)
    torch.testing.assert_close(low(x), ref)


def test_decoupled_truncates_each_filter_optimally():
    conv = _conv((6, 4, 3, 1, 1, 1))
    low = LowRankConv2d.from_dense(conv, 2, "decoupled")
    S = torch.linalg.svdvals(conv.weight.detach().reshape(4, 6, 9))
    torch.testing.assert_close((low.weight - conv.weight).square().sum(), S[:, 2:].square().sum())


@pytest.mark.parametrize("scheme,rank", [("channel", 3), ("spatial", 4), ("decoupled", 2), ("tucker2", (3, 5))])
def test_flops_and_params_match_count(scheme, rank):
    low = LowRankConv2d.from_dense(_conv((8, 6, 3, 2, 1, 1)), rank, scheme).float()
    c = count(low, (1, 8, 16, 16))
    assert c.flops == low.flops((16, 16))
    assert c.params == sum(p.numel() for p in low.parameters())


def test_tucker2_factor_shapes_and_independent_ranks():
    low = LowRankConv2d(16, 32, 3, rank=(4, 8), scheme="tucker2", padding=1)
    assert [tuple(c.weight.shape) for c in low.factors] == [(4, 16, 1, 1), (8, 4, 3, 3), (32, 8, 1, 1)]
    assert low.rank == (4, 8)
    assert LowRankConv2d(16, 32, 3, rank=5, scheme="tucker2").rank == (5, 5)


def test_bad_inputs_name_the_problem():
    conv = nn.Conv2d(4, 8, 3)
    with pytest.raises(ValueError, match=r"rank 0 is out of range.*1\.\.8"):
        LowRankConv2d.from_dense(conv, 0)
    with pytest.raises(ValueError, match=r"rank 99 is out of range"):
        LowRankConv2d.from_dense(conv, 99, "spatial")
    with pytest.raises(ValueError, match=r"unknown scheme 'chanel' \(did you mean 'channel'\?\)"):
        LowRankConv2d.from_dense(conv, 2, "chanel")
    with pytest.raises(ValueError, match="depthwise conv"):
        LowRankConv2d.from_dense(nn.Conv2d(4, 4, 3, groups=4), 1)
    with pytest.raises(ValueError, match="grouped conv"):
        LowRankConv2d.from_dense(nn.Conv2d(4, 8, 3, groups=2), 1)
    with pytest.raises(ValueError, match="r_in in 1..4"):
        LowRankConv2d(4, 8, 3, rank=(5, 2), scheme="tucker2")


@pytest.mark.parametrize("scheme, rank", [("channel", 2.9), ("channel", True), ("spatial", "3"),
                                          ("tucker2", (2.5, 2)), ("tucker2", (1, 2, 3))])
def test_a_rank_that_is_not_a_whole_number_is_refused_not_rounded(scheme, rank):
    with pytest.raises(ValueError, match=r"takes (one integer rank|an integer rank or a pair)"):
        LowRankConv2d(4, 8, 3, rank=rank, scheme=scheme)


def test_whole_ranks_of_other_integer_types_are_accepted():
    import numpy as np

    assert LowRankConv2d(4, 8, 3, rank=np.int64(3)).rank == 3
    assert LowRankConv2d(4, 8, 3, rank=torch.tensor(3)).rank == 3
    assert LowRankConv2d(4, 8, 3, rank=3.0).rank == 3
    assert LowRankConv2d(4, 8, 3, rank=(np.int32(2), 3.0), scheme="tucker2").rank == (2, 3)


def test_linear_full_rank_exact_and_truncation_optimal():
    torch.manual_seed(0)
    lin = nn.Linear(12, 7).double()
    x = torch.randn(3, 12, dtype=torch.float64)
    full = LowRankLinear.from_dense(lin, 7)
    assert (full(x) - lin(x)).abs().max() < 1e-8
    assert (full.to_dense()(x) - lin(x)).abs().max() < 1e-8
    S = torch.linalg.svdvals(lin.weight.detach())
    low = LowRankLinear.from_dense(lin, 3)
    torch.testing.assert_close((low.weight - lin.weight).square().sum(), S[3:].square().sum())
    with pytest.raises(ValueError, match=r"rank 8 is out of range \(valid ranks are 1..7\)"):
        LowRankLinear.from_dense(lin, 8)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_conv_equals_the_conv_in_value_and_gradient(bias, channels_last):
    torch.manual_seed(0)
    fast = PointwiseConv2d(6, 10, bias=bias)
    ref = nn.Conv2d(6, 10, 1, bias=bias)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(3, 6, 7, 5)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = fast(xa), ref(xb)
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-5)
    if bias:
        torch.testing.assert_close(fast.bias.grad, ref.bias.grad, atol=1e-4, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the same output dtype as the conv's
        assert fast(x).dtype == ref(x).dtype == torch.bfloat16
    torch.testing.assert_close(fast(x[0]), ref(x[0]), atol=1e-5, rtol=1e-5)  # unbatched input


def test_plain_one_by_one_factors_are_pointwise_convs():
    kinds = [type(c) for c in LowRankConv2d(16, 32, 3, 4, "tucker2", stride=2, padding=1).factors]
    assert kinds == [PointwiseConv2d, nn.Conv2d, PointwiseConv2d]
    kinds = [type(c) for c in LowRankConv2d(16, 32, 1, 4, "channel", stride=2).factors]
    assert kinds == [nn.Conv2d, PointwiseConv2d]  # the strided 1×1 factor stays a conv


@pytest.mark.parametrize("channels_last", [False, True])
def test_low_rank_layers_compile_into_one_graph_with_the_eager_result(channels_last):
    torch.manual_seed(0)
    net = nn.Sequential(LowRankConv2d(8, 16, 3, (4, 6), "tucker2", padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        LowRankConv2d(16, 16, 3, 5, "channel", stride=2, padding=1))
    x = torch.randn(2, 8, 6, 6)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)  # fullgraph: no graph break anywhere
    out = compiled(x)
    torch.testing.assert_close(out, net(x))
    out.square().sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net(x).square().sum().backward()
    for a, p in zip(grads, net.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-5, rtol=1e-4)


def test_rank_errors_read_in_constructor_order_and_say_integer():
    with pytest.raises(ValueError, match=r"^LowRankConv2d\(16, 32, kernel_size=\(3, 3\)\): rank 0 is out of range"):
        LowRankConv2d(16, 32, 3, 0)
    with pytest.raises(ValueError, match=r"^LowRankLinear\(16, 8\): rank 2.5 is not an integer \(valid ranks "
                                         r"are 1..8\)"):
        LowRankLinear(16, 8, 2.5)
    with pytest.raises(ValueError, match="resnet20: num_classes must be a positive integer, got 0"):
        models.create("resnet20", num_classes=0)


def test_from_dense_names_the_layer_type_it_expects():
    with pytest.raises(ValueError, match="expected an nn.Linear, got Conv2d"):
        LowRankLinear.from_dense(nn.Conv2d(4, 4, 3), 2)
    with pytest.raises(ValueError, match="expected an nn.Conv2d, got Linear"):
        LowRankConv2d.from_dense(nn.Linear(4, 4), 2)


def test_a_low_rank_conv_answers_the_dense_convs_attributes():
    conv = nn.Conv2d(16, 32, (3, 5), stride=2, padding=(1, 2), dilation=1)
    for scheme in ("channel", "spatial", "tucker2"):
        low = LowRankConv2d.from_dense(conv, 4, scheme)
        assert (low.in_channels, low.out_channels, low.kernel_size, low.stride, low.padding, low.dilation,
                low.groups) == (16, 32, (3, 5), (2, 2), (1, 2), (1, 1), 1)


@pytest.mark.parametrize("scheme", ["channel", "spatial", "decoupled"])
def test_a_stack_of_weights_has_the_stack_of_their_matrix_forms(scheme):
    s = get_scheme(scheme)
    weights = torch.randn(3, 6, 4, 3, 5)  # three 6×4×3×5 convs (kh ≠ kw: a transposed axis would show)
    stacked = s.to_matrix(weights)
    assert torch.equal(stacked, torch.stack([s.to_matrix(w) for w in weights]))
    assert torch.equal(s.from_matrix(stacked, weights.shape), weights)
    assert torch.equal(s.from_matrix(stacked[1], weights.shape[1:]), weights[1])


@pytest.mark.parametrize("scheme", ["channel", "spatial", "decoupled", "tucker2", "linear"])
def test_the_dense_form_under_autocast_is_the_exact_float32_one(scheme):
    """A bf16 product under autocast rounded the composed weight (5e-3) and made to_dense a bf16 layer that
    a float32 model then refused (its input float, its bias bf16)."""
    torch.manual_seed(0)
    if scheme == "linear":
        layer = LowRankLinear.from_dense(nn.Linear(24, 16), 6)
    else:
        layer = LowRankConv2d.from_dense(nn.Conv2d(8, 16, 3, padding=1), 6 if scheme != "tucker2" else (4, 6), scheme)
    outside = layer.to_dense()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside, weight = layer.to_dense(), layer.weight
    assert weight.dtype == inside.weight.dtype == torch.float32
    assert torch.equal(weight, outside.weight) and torch.equal(inside.weight, outside.weight)
