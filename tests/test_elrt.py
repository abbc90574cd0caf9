import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrtrain as lr
from lrtrain import models
from lrtrain.layers import LowRankConv2d, LowRankLinear, PointwiseConv2d
from lrtrain.methods import create_method
from lrtrain.methods.elrt import ELRT

SMALL = (1, 3, 8, 8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # On a shared 2-core machine OpenMP threads spin against each other: one thread is many times faster
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(classes=4):
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes))


def _factor_params(method):
    return [p for layer in method.layers.values() for p in layer.parameters() if p.dim() > 1]


@pytest.mark.parametrize("scheme", ["tucker2", "channel"])
def test_no_dense_sized_weight_remains_after_construction(scheme):
    dense = models.create("resnet20")
    eligible = {n: m.weight for n, m in dense.named_modules() if isinstance(m, nn.Conv2d)}
    model = models.create("resnet20")
    method = ELRT(model, rank="flops:0.46", scheme=scheme)
    assert len(method.layers) == 18  # every 3x3 conv of the blocks; the stem and the classifier stay dense
    factorized_shapes = {tuple(eligible[n].shape) for n in method.layers}
    for name, p in model.named_parameters():
        assert tuple(p.shape) not in factorized_shapes, name
    for name, layer in method.layers.items():
        assert isinstance(model.get_submodule(name), LowRankConv2d)
        assert all(p.numel() < eligible[name].numel() for p in layer.parameters())


def test_first_conv_and_classifier_dense_by_default_and_configurable():
    model = models.create("resnet20")
    ELRT(model, rank="flops:0.5")
    assert type(model.conv1) is nn.Conv2d and type(model.fc) is nn.Linear
    model = models.create("resnet20")
    method = ELRT(model, rank="ratio:0.5", skip=())
    assert isinstance(model.conv1, LowRankConv2d) and isinstance(model.fc, LowRankLinear)
    assert "fc" in method.ranks() and "conv1" in method.ranks()
    model = models.create("resnet20")
    ELRT(model, rank="ratio:0.5", skip=["layer3.*"])
    assert isinstance(model.conv1, LowRankConv2d) and type(model.layer3[0].conv1) is nn.Conv2d


def test_a_model_with_nothing_left_to_factorize_names_the_default_skip_list():
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    with pytest.raises(ValueError, match=r"\(0: in the skip list; 4: in the skip list\); skip list \['0', '4'\] "
                                         r"\(ELRT's default: the first conv and the classifier\)"):
        ELRT(net, rank="flops:0.5")
    with pytest.raises(ValueError, match=r"skip list \['\*'\]$"):  # the user's own: no default to explain
        ELRT(net, rank="flops:0.5", skip=["*"])


@pytest.mark.parametrize("name,fraction", [("resnet20", 0.46), ("resnet56", 0.43), ("resnet56", 0.3)])
@pytest.mark.parametrize("scheme,equal", [("tucker2", True), ("tucker2", False), ("channel", True)])
def test_flops_budget_is_met_and_nearly_spent(name, fraction, scheme, equal):
    dense = lr.count(models.create(name)).flops
    model = models.create(name)
    method = ELRT(model, rank=lr.FlopsBudget(fraction), scheme=scheme, equal_ranks=equal)
    flops = lr.count(model).flops
    assert flops <= fraction * dense
    assert flops >= 0.9 * fraction * dense  # the common-ratio search does not leave the budget unused
    assert sum(d.flops for d in method.decisions) == flops


def test_a_flops_budget_with_a_multiple_trains_aligned_ranks():
    model = models.create("resnet20")
    dense = lr.count(model).flops
    method = ELRT(model, rank="flops:0.45,multiple:8")
    ranks = [r for pair in method.ranks().values() for r in (pair if isinstance(pair, tuple) else (pair,))]
    assert ranks and all(r % 8 == 0 for r in ranks)
    assert lr.count(model).flops <= 0.45 * dense


def test_equal_ranks_by_default_independent_on_request():
    model = _tiny()
    tied = ELRT(model, rank="ratio:0.5", skip=(), input_size=SMALL).ranks()
    assert all(r_in == r_out for r_in, r_out in (tied[n] for n in ("3", "6")))
    assert tied["3"] == (8, 8)  # 16 -> 32 conv: min(16, 32) * 0.5
    free = ELRT(_tiny(), rank="ratio:0.5", skip=(), equal_ranks=False, input_size=SMALL).ranks()
    assert free["3"] == (8, 16)
    pinned = ELRT(_tiny(), rank={"3": (4, 12), "6": 5}, input_size=SMALL).ranks()
    assert pinned == {"3": (4, 12), "6": (5, 5)}


@pytest.mark.parametrize("scheme", ["tucker2", "channel"])
def test_counts_match_the_layers_analytic_cost(scheme):
    model = _tiny()
    method = ELRT(model, rank="ratio:0.4", scheme=scheme, skip=(), input_size=SMALL)
    counts = lr.count(model, SMALL)
    assert counts.params == sum(p.numel() for p in model.parameters())
    for name, layer in method.layers.items():
        leaves = sum(c.flops for n, c in counts.layers.items() if n.startswith(name + "."))
        if isinstance(layer, LowRankConv2d):
            hw = counts.layers[name + ".factors.0"].in_shape[-2:]
            assert leaves == layer.flops(hw)
        else:
            assert leaves == layer.flops()
    # the tucker2 cost is c·r_in + r_in·r_out·k² + r_out·n per output pixel (stride on the core)
    if scheme == "tucker2":
        (r_in, r_out), hw_in, hw_out = method.ranks()["3"], 8 * 8, 4 * 4
        expect = hw_in * 16 * r_in + hw_out * (r_in * r_out * 9 + r_out * 32)
        assert sum(c.flops for n, c in counts.layers.items() if n.startswith("3.")) == expect


@pytest.mark.parametrize("scheme", ["tucker2", "channel"])
def test_closed_form_gradient_matches_autograd_of_the_penalty(scheme):
    torch.manual_seed(0)
    model = _tiny().double()
    method = ELRT(model, rank="ratio:0.5", scheme=scheme, orth=0.3, init="kaiming", skip=(), input_size=SMALL)
    params = _factor_params(method)
    expected = torch.autograd.grad(method.penalty(), params, allow_unused=True)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)  # the closed form is added to the loss gradient
    method.before_step()
    for p, g in zip(params, expected):
        want = 0.5 + (g if g is not None else torch.zeros_like(p))
        torch.testing.assert_close(p.grad, want, rtol=1e-10, atol=1e-12)
    assert any(g is not None and g.abs().max() > 1e-3 for g in expected)


def test_before_step_is_the_same_for_a_channels_last_model():
    torch.manual_seed(0)
    grads = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        model = _tiny().double()
        method = ELRT(model, rank="ratio:0.5", scheme="channel", orth=0.3, init="kaiming", input_size=SMALL)
        model.to(memory_format=fmt)  # as the trainer does after building the method
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        method.before_step()
        grads.append([p.grad.contiguous() for p in model.parameters()])
        torch.manual_seed(0)
    assert model[3].factors[0].weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_penalty_is_the_sum_of_the_factor_terms():
    model = _tiny().double()
    method = ELRT(model, rank={"3": (6, 10)}, orth=0.1, init="gaussian", input_size=SMALL)
    layer = method.layers["3"]
    u_in = layer.factors[0].weight.reshape(6, 16).mT   # c × r_in
    u_out = layer.factors[2].weight.reshape(32, 10)    # n × r_out
    eye = torch.eye(10, dtype=torch.float64)
    own = (u_out.mT @ u_out - eye).square().sum() + (u_in.mT @ u_in - eye[:6, :6]).square().sum()
    torch.testing.assert_close(method.penalty(), 0.1 * own)
    assert own > 1.0  # Gaussian factors of these shapes are far from orthonormal


def test_channel_penalty_is_the_sum_of_the_factor_terms():
    """Channel scheme: the k×k factor's weight (r, c, k, k) is V (r × c·k², rows orthonormal) and the 1×1
    factor's (n, r, 1, 1) is U (n × r, columns orthonormal): λ(‖VVᵀ − I‖² + ‖UᵀU − I‖²), summed over layers."""
    model = _tiny().double()
    method = ELRT(model, rank={"3": 6, "6": 5}, scheme="channel", orth=0.1, init="gaussian", input_size=SMALL)
    own = 0.0
    for name, (n, c, r) in {"3": (32, 16, 6), "6": (32, 32, 5)}.items():
        first, second = method.layers[name].factors
        assert first.weight.shape == (r, c, 3, 3) and second.weight.shape == (n, r, 1, 1)
        V = first.weight.reshape(r, c * 9)
        U = second.weight.reshape(n, r)
        eye = torch.eye(r, dtype=torch.float64)
        own = own + (V @ V.mT - eye).square().sum() + (U.mT @ U - eye).square().sum()
    torch.testing.assert_close(method.penalty(), 0.1 * own)
    assert own > 1.0  # Gaussian factors of these shapes are far from orthonormal


@pytest.mark.parametrize("scheme", ["tucker2", "channel"])
def test_orthonormal_init_has_zero_penalty_and_no_regularizer_gradient(scheme):
    model = _tiny().double()
    method = ELRT(model, rank="ratio:0.5", scheme=scheme, orth=1.0, skip=(), input_size=SMALL)
    assert method.penalty().item() < 1e-20
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    method.before_step()
    assert max(p.grad.abs().max().item() for p in model.parameters()) < 1e-12


def test_a_bf16_model_gets_orthonormal_factors_in_its_own_dtype():
    model = _tiny().to(torch.bfloat16)
    method = ELRT(model, rank="ratio:0.5", orth=1.0, skip=(), input_size=SMALL)
    params = _factor_params(method)
    assert params and all(p.dtype == torch.bfloat16 for p in model.parameters())
    # orthonormal up to bf16 rounding (the penalty of Gaussian factors of these shapes exceeds 1)
    assert method.penalty().float().item() < 0.05


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_models_regularizer_is_computed_in_float32(dtype):
    """VVᵀ − I of near-orthonormal factors is as small as half precision's rounding at 1: computed in bf16,
    the gradient was 20-96 % off. It is computed in float32 from the rounded weights, and rounded once."""
    torch.manual_seed(0)
    method = ELRT(_tiny(), rank="ratio:0.5", orth=1.0, skip=(), input_size=SMALL)  # orthonormal factors
    with torch.no_grad():
        for p in _factor_params(method):
            p.mul_(1 + 1e-2 * torch.randn_like(p))  # 1 % off orthonormal: a small gradient to get right
    method.model.to(dtype)
    reference = copy.deepcopy(method)  # the same rounded weights, in float64
    reference.model.double()
    want = torch.autograd.grad(reference.penalty(), _factor_params(reference), allow_unused=True)
    params = _factor_params(method)
    for p in params:
        p.grad = torch.zeros_like(p)
    method.before_step()
    regularized = [(p, w) for p, w in zip(params, want) if w is not None]  # the core is not regularized
    assert regularized
    for p, w in regularized:
        assert p.grad.dtype == dtype
        torch.testing.assert_close(p.grad.double(), w, rtol=0, atol=1e-2 * w.abs().max().item())


def test_orthogonal_init_preserves_the_dense_weight_variance():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    method = ELRT(nn.Sequential(conv), rank={"0": (24, 40)}, input_size=(1, 64, 8, 8))
    w = method.layers["0"].weight  # composed here only to check the init
    target = 2.0 / (64 * 9)  # Kaiming fan-in with the ReLU gain
    assert abs(w.var().item() / target - 1) < 0.05
    u_out = method.layers["0"].factors[2].weight.reshape(64, 40)
    torch.testing.assert_close(u_out.mT @ u_out, torch.eye(40), atol=1e-5, rtol=0)


@pytest.mark.parametrize("init", ["orthogonal", "kaiming"])
def test_short_run_on_generated_data_decreases_the_loss(init):
    torch.manual_seed(0)
    x = torch.randn(256, 3, 8, 8)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1, :4].mean((1, 2)) > 0).long()
    model = _tiny()
    method = ELRT(model, rank="ratio:0.5", orth=1e-2, init=init, input_size=SMALL)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    with torch.no_grad():
        before = F.cross_entropy(model.eval()(x), y).item()
    model.train()
    for step in range(40):
        idx = torch.arange(step * 64, step * 64 + 64) % 256
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        method.before_step()
        opt.step()
        opt.zero_grad()
        method.after_step()
    with torch.no_grad():
        after = F.cross_entropy(model.eval()(x), y).item()
    assert after < 0.7 * before
    assert method.step == 40


def test_regularizer_pulls_factors_back_to_orthonormal():
    torch.manual_seed(0)
    model = _tiny()
    method = ELRT(model, rank="ratio:0.5", orth=0.5, init="kaiming", input_size=SMALL)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    start = method.penalty().item()
    for _ in range(50):  # no data loss: only the regularizer acts
        method.before_step()
        opt.step()
        opt.zero_grad()
    assert method.penalty().item() < 1e-3 * start


def test_orth_zero_adds_nothing():
    model = _tiny()
    method = ELRT(model, rank="ratio:0.5", orth=0.0, init="kaiming", input_size=SMALL)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    method.before_step()
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())
    assert method.penalty().item() == 0


def test_state_dict_round_trip_and_rank_mismatch():
    torch.manual_seed(0)
    model = _tiny()
    method = ELRT(model, rank="flops:0.5", input_size=SMALL)
    method.step = 17
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "method": method.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    twin = _tiny()
    again = ELRT(twin, rank="flops:0.5", input_size=SMALL)
    twin.load_state_dict(saved["model"])
    again.load_state_dict(saved["method"])
    assert again.step == 17 and again.ranks() == method.ranks()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(twin.eval()(x), model.eval()(x))
    other = ELRT(_tiny(), rank="flops:0.3", input_size=SMALL)
    with pytest.raises(ValueError, match="ranks do not match"):
        other.load_state_dict(saved["method"])


def test_finalize_exports_to_torchscript_with_the_same_function():
    model = _tiny().eval()
    compact = ELRT(model, rank="ratio:0.5", skip=(), input_size=SMALL).finalize()
    assert compact is model
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = compact(x)
        torch.testing.assert_close(torch.jit.script(compact)(x), ref)
        torch.testing.assert_close(torch.jit.trace(compact, x)(x), ref)
    standard = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear)
    leaves = [m for m in compact.modules() if not list(m.children())]
    assert all(isinstance(m, standard) for m in leaves)  # PointwiseConv2d is an nn.Conv2d
    assert any(isinstance(m, PointwiseConv2d) for m in leaves)


def test_rank_log_and_registry():
    model = _tiny()
    method = create_method("elrt", model, rank="ratio:0.5", scheme="channel", input_size=SMALL)
    assert isinstance(method, ELRT)
    rows = {r["layer"]: r for r in method.rank_log}
    assert rows["3"] == {"step": 0, "layer": "3", "rank": 16, "max_rank": 32}


def test_errors_name_the_value_and_the_choices():
    with pytest.raises(ValueError, match="valid choices: tucker2, channel"):
        ELRT(_tiny(), scheme="spatial", input_size=SMALL)
    with pytest.raises(ValueError, match="'ortho'.*orthogonal, gaussian, kaiming"):
        ELRT(_tiny(), init="ortho", input_size=SMALL)
    with pytest.raises(ValueError, match="Energy needs the layer's singular values"):
        ELRT(_tiny(), rank="energy:0.9", input_size=SMALL)
    with pytest.raises(ValueError, match="orth"):
        ELRT(_tiny(), orth=-1.0, input_size=SMALL)
    with pytest.raises(ValueError, match=r"3: rank \(40, 8\) is out of range"):
        ELRT(_tiny(), rank={"3": (40, 8)}, input_size=SMALL)
