import copy
import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrtrain as lr
from lrtrain import linalg, models
from lrtrain.config import load_recipe
from lrtrain.layers import LowRankConv2d
from lrtrain.methods import create_method
from lrtrain.methods.lrpet import LRPET, VanishedConv2d

SMALL = (1, 3, 8, 8)


def _mat(conv):
    return conv.weight.detach().flatten(1).double()


def _tiny_resnet():
    torch.manual_seed(0)
    return models.create("resnet20", width=4)  # 4/8/16 channels: every SVD is tiny


def _randomize_bns(model, seed=0):
    """BN statistics far from the identity, as after training, so rectification matters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 10 ** (torch.rand(n, generator=g) * 3 - 2)  # γ in [0.01, 10]
            m.bias.data = torch.randn(n, generator=g)
            m.running_mean = torch.randn(n, generator=g)
            m.running_var = 10 ** (torch.rand(n, generator=g) * 4 - 2)  # var in [0.01, 100]
    return model


def _convs(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_goal_rank_and_rank_after_projection_equals_target():
    model = _tiny_resnet()
    method = LRPET(model, goal=0.54, period=1, input_size=SMALL)
    method.project()
    ranks = method.ranks()
    convs = _convs(model)
    assert set(ranks) == set(convs)  # every conv, the first included
    for name, conv in convs.items():
        n = min(conv.out_channels, conv.in_channels * 9)
        assert ranks[name] == max(1, int(n - n * 0.54))
        assert int(linalg.numerical_rank(linalg.svd(_mat(conv)).S, 1e-6)) == ranks[name], name
    assert {r["layer"] for r in method.rank_log} == set(convs)
    assert all(r["step"] == 0 and r["max_rank"] >= r["rank"] for r in method.rank_log)


@pytest.mark.parametrize("rho", [0.0, 0.5])
def test_energy_transfer_preserves_sum_of_squared_singular_values(rho):
    model = _tiny_resnet()
    before = {n: _mat(c).square().sum() for n, c in _convs(model).items()}
    LRPET(model, goal=0.7, transfer=rho, bn_rectify=False, input_size=SMALL).project()
    for name, conv in _convs(model).items():
        torch.testing.assert_close(_mat(conv).square().sum(), before[name], rtol=1e-5, atol=0)
    # without energy transfer it is a plain truncation and loses energy
    model2 = _tiny_resnet()
    LRPET(model2, goal=0.7, energy_transfer=False, bn_rectify=False, input_size=SMALL).project()
    assert all(_mat(c).square().sum() < before[n] * 0.99 for n, c in _convs(model2).items())


def test_energy_transfer_scales_kept_values_uniformly_and_tail_by_rho():
    model = _tiny_resnet()
    conv = model.layer3[1].conv1
    S = linalg.svd(_mat(conv)).S
    LRPET(model, rank={"layer3.1.conv1": 5}, transfer=0.5, bn_rectify=False, input_size=SMALL).project()
    S_new = linalg.svd(_mat(conv)).S
    ratio = S_new[:5] / S[:5]
    torch.testing.assert_close(ratio, ratio[0].expand(5), rtol=1e-5, atol=0)
    assert float(ratio[0]) > 1
    torch.testing.assert_close(S_new[5:], 0.5 * S[5:], rtol=1e-5, atol=1e-9)


def _conv_bn(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
    return _randomize_bns(net, seed).eval()


@pytest.mark.parametrize("energy_transfer", [False, True])
def test_bn_rectification_brings_the_output_after_bn_closer(energy_transfer):
    x = torch.randn(64, 8, 12, 12, generator=torch.Generator().manual_seed(1))
    for seed in range(3):
        ref_net = _conv_bn(seed)
        with torch.no_grad():
            ref = ref_net(x)
        errors = {}
        for rectify in (True, False):
            net = copy.deepcopy(ref_net)
            LRPET(net, goal=0.6, energy_transfer=energy_transfer, bn_rectify=rectify, input_size=(1, 8, 8, 8)).project()
            with torch.no_grad():
                errors[rectify] = (net(x) - ref).norm() / ref.norm()
        assert errors[True] < 0.5 * errors[False], (seed, errors)


def test_projection_commutes_with_bn_folding():
    net = _conv_bn(3)
    conv, bn = net
    alpha = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().double()
    folded = alpha[:, None] * _mat(conv)
    U, S, Vh = linalg.svd(folded)
    rank = int(16 - 16 * 0.6)
    expected = linalg.reconstruct(U, linalg.transfer_energy(S, rank), Vh)
    LRPET(net, goal=0.6, input_size=(1, 8, 8, 8)).project()
    # projecting then folding BN equals folding then projecting (up to the official 1e-5 damping)
    torch.testing.assert_close(alpha[:, None] * _mat(conv), expected, rtol=0, atol=1e-4 * float(S[0]))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_a_dead_bn_channel_is_unrectified_with_the_damped_inverse(dtype, tol):
    """α is undone with α/(α² + 1e-5), not 1/α: a channel whose γ died (α = 0) comes back as a zero row,
    not 0/0 or a blown-up round-off, and a dying one (α = 1e-4, where the damping gives ≈ 10 rather
    than 1/α = 1e4) is shrunk towards zero; channels with α of order 1 are undone as by 1/α. Expected
    values from a float64 SVD of diag(α)·W, the energy transfer written out; a float64 model is rectified
    in float64 (it was in float32: 4e-7 off)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)).eval()
    conv, bn = net
    dead, dying = [2, 7, 13], [5, 11]
    with torch.no_grad():
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 2.0)
        bn.weight[dead] = 0.0
        bn.weight[dying] = 1e-4 * (bn.running_var[dying] + bn.eps).sqrt()  # α = 1e-4
    net.to(dtype)
    alpha = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().double()
    W = _mat(conv)
    r = int(16 - 16 * 0.5)
    U, S, Vh = torch.linalg.svd(alpha[:, None] * W, full_matrices=False)
    kept = S[:r] * (S.square().sum() / S[:r].square().sum()).sqrt()  # energy transfer: Σσ² unchanged
    rectified = U[:, :r] @ torch.diag(kept) @ Vh[:r]
    expected = (alpha / (alpha.square() + 1e-5))[:, None] * rectified
    LRPET(net, goal=0.5, input_size=(1, 8, 8, 8)).project()
    got = _mat(conv)
    assert torch.isfinite(got).all()
    assert (got[dead] == 0).all()  # 0·(a finite row): exactly zero
    scale = float(expected.abs().max())
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=tol * scale)  # dying rows included
    assert float(got[dying].abs().max()) < 0.01 * scale  # shrunk: 1/α would give rows of order W's
    live = [i for i in range(16) if i not in dead + dying]  # α ≥ 0.35: the damping changes them < 1e-4
    torch.testing.assert_close(got[live].double(), rectified[live] / alpha[live, None], rtol=0, atol=1e-4 * scale)


def test_conv_without_bn_is_projected_without_rectification():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1))
    _randomize_bns(net)
    plain = copy.deepcopy(net[3])
    method = LRPET(net, goal=0.5, input_size=SMALL)
    assert set(method._bns) == {"0"}
    method.project()
    W = _mat(plain)
    U, S, Vh = linalg.svd(W)
    torch.testing.assert_close(_mat(net[3]), linalg.reconstruct(U, linalg.transfer_energy(S, 4), Vh),
                               rtol=1e-5, atol=1e-6)


def test_period_epoch_projects_once_per_epoch_and_needs_setup():
    model = _tiny_resnet()
    method = LRPET(model, goal=0.5, input_size=SMALL)
    with pytest.raises(RuntimeError, match="setup"):
        method.after_step()
    method = LRPET(model, goal=0.5, input_size=SMALL)
    method.setup(steps_per_epoch=3, total_steps=9)
    for _ in range(7):
        method.after_step()
    assert sorted({r["step"] for r in method.rank_log}) == [3, 6]


def test_finalize_equals_projected_model_keeps_stride_and_cuts_vanished_layers():
    model = _randomize_bns(_tiny_resnet())
    with torch.no_grad():
        model.layer2[1].conv2.weight.zero_()  # a residual branch that died: only its BN's constant is left
    method = LRPET(model, goal=0.5, period=1, input_size=SMALL)
    method.after_step()  # projects
    logged = {row["layer"]: row["rank"] for row in method.rank_log}
    assert logged["layer2.1.conv2"] == 0 and logged["layer2.0.conv1"] == method.ranks()["layer2.0.conv1"] > 0
    model.eval()
    compact = method.finalize().eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), model(x), rtol=1e-4, atol=1e-4)
    assert isinstance(compact.layer2[1].conv2, VanishedConv2d)
    down = compact.layer2[0].conv1
    assert isinstance(down, LowRankConv2d) and down.factors[0].stride == (2, 2) and down.factors[0].padding == (1, 1)
    assert down.factors[1].kernel_size == (1, 1) and down.rank == method.ranks()["layer2.0.conv1"]
    # count() sees the factorized layers at their cost and the cut layer at none
    dense = lr.count(model, SMALL)
    expected = dense.flops
    for name in method.ranks():
        layer, before = compact.get_submodule(name), dense.layers[name]
        after = {VanishedConv2d: 0, nn.Conv2d: before.flops}.get(type(layer)) if not isinstance(
            layer, LowRankConv2d) else layer.flops(before.in_shape[-2:])
        expected += after - before.flops
    assert lr.count(compact, SMALL).flops == expected < dense.flops
    assert isinstance(model.layer2[1].conv2, nn.Conv2d)  # the training model is left as it was


def test_finalize_never_makes_a_layer_costlier_than_dense():
    model = _tiny_resnet()
    method = LRPET(model, goal=0.0, period=1, input_size=SMALL)  # full rank: nothing is cheaper factorized
    with pytest.warns(UserWarning, match="^LRPET.finalize: no layer was decomposed at its final ranks") as said:
        compact = method.finalize()
    assert [w.filename for w in said] == [__file__]  # one warning, pointed at the caller's line
    assert not any(isinstance(m, LowRankConv2d) for m in compact.modules())
    assert lr.count(compact, SMALL).flops == lr.count(model, SMALL).flops


def test_finalize_reprojects_a_model_trained_past_its_last_projection():
    model = _tiny_resnet()
    method = LRPET(model, goal=0.5, period=100, input_size=SMALL)
    method.after_step()  # step 1: no projection yet, weights are full rank
    compact = method.finalize().eval()
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), model(x), rtol=1e-4, atol=1e-4)
    conv = model.layer1[0].conv1
    assert int(linalg.numerical_rank(linalg.svd(_mat(conv)).S)) == method.ranks()["layer1.0.conv1"]


def test_flops_budget_policy_meets_the_budget_after_finalize():
    model = _tiny_resnet()
    dense = lr.count(model, SMALL).flops
    method = LRPET(model, rank="flops:0.5", period=1, input_size=SMALL)
    assert method.ranks() == {}
    method.after_step()
    ranks = method.ranks()
    assert len(set(ranks.values())) > 1  # chosen per layer from the spectra
    compact = method.finalize()
    assert 0.4 * dense < lr.count(compact, SMALL).flops <= 0.5 * dense


def test_skip_patterns_and_explicit_ranks_are_checked():
    model = _tiny_resnet()
    method = LRPET(model, goal=0.5, skip=["conv1", "layer3.*"], input_size=SMALL)
    assert "conv1" not in method.ranks() and not any(n.startswith("layer3") for n in method.ranks())
    with pytest.raises(ValueError, match="layer1.0.conv1.*out of range"):
        LRPET(model, rank={"layer1.0.conv1": 99}, input_size=SMALL)
    with pytest.raises(ValueError, match="exactly one of goal"):
        LRPET(model, input_size=SMALL)
    with pytest.raises(ValueError, match="goal"):
        LRPET(model, goal=1.0, input_size=SMALL)
    with pytest.raises(ValueError, match="period"):
        LRPET(model, goal=0.5, period=0, input_size=SMALL)


def _data(n=256, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, 3, 1, 1, generator=g) * 1.5
    y = torch.randint(0, classes, (n,), generator=g)
    x = means[y] + torch.randn(n, 3, 8, 8, generator=g)
    return x, y


def test_short_run_on_generated_data_lowers_the_loss():
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=4, width=4)
    method = create_method("lrpet", model, goal=0.5, period=4, input_size=list(SMALL))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = _data()

    def loss():
        # batch statistics: the running ones lag behind each projection in so short a run
        with torch.no_grad():
            return float(F.cross_entropy(model(x), y))

    start = loss()
    for epoch in range(3):
        for i in range(0, len(x), 32):
            F.cross_entropy(model(x[i:i + 32]), y[i:i + 32]).backward()
            method.before_step(); opt.step(); opt.zero_grad(); method.after_step()
    assert method.step % 4 == 0  # the loss below is the projected model's
    assert loss() < 0.5 * start


def test_state_dict_round_trip_resumes_the_schedule_and_ranks():
    model = _tiny_resnet()
    method = LRPET(model, rank="flops:0.5", period=3, input_size=SMALL)
    for _ in range(4):
        method.after_step()
    buf = io.BytesIO()
    torch.save({"method": method.state_dict(), "model": model.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model2 = _tiny_resnet()
    model2.load_state_dict(saved["model"])
    resumed = LRPET(model2, rank="flops:0.5", period=3, input_size=SMALL)
    resumed.load_state_dict(saved["method"])
    assert resumed.step == 4 and resumed.ranks() == method.ranks()
    for m in (method, resumed):
        m.after_step(); m.after_step()
    assert resumed.rank_log[-1]["step"] == method.rank_log[-1]["step"] == 6
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="does not manage"):
        LRPET(_tiny_resnet(), goal=0.5, skip=["conv1"], input_size=SMALL).load_state_dict(saved["method"])



def test_a_resume_with_changed_rank_settings_projects_to_the_new_ones():
    model = _tiny_resnet()
    saved = LRPET(model, goal=0.5, period=3, input_size=SMALL).state_dict()
    wanted = LRPET(_tiny_resnet(), goal=0.8, input_size=SMALL).ranks()
    resumed = LRPET(model, goal=0.8, period=3, input_size=SMALL)
    resumed.load_state_dict(saved)
    assert resumed.ranks() == wanted != saved["ranks"]
    # saved before the first projection of a spectrum rule (no ranks yet), resumed under a goal
    early = LRPET(_tiny_resnet(), rank="energy:0.9", input_size=SMALL).state_dict()
    assert early["ranks"] == {}
    resumed = LRPET(_tiny_resnet(), goal=0.5, input_size=SMALL)
    resumed.load_state_dict(early)
    resumed.project()
    assert resumed.ranks() == LRPET(_tiny_resnet(), goal=0.5, input_size=SMALL).ranks()


def test_without_energy_transfer_the_pruned_values_are_still_scaled_by_rho():
    model = _tiny_resnet()
    conv = model.layer3[1].conv1
    S = linalg.svd(_mat(conv)).S
    LRPET(model, rank={"layer3.1.conv1": 5}, transfer=0.5, energy_transfer=False, bn_rectify=False,
          input_size=SMALL).project()
    torch.testing.assert_close(linalg.svd(_mat(conv)).S, torch.cat([S[:5], 0.5 * S[5:]]), rtol=1e-5, atol=1e-9)


def test_hooks_called_under_autocast_still_project_exactly():
    model = _tiny_resnet()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        LRPET(model, rank={"layer3.1.conv1": 5}, bn_rectify=False, input_size=SMALL).project()
        assert torch.is_autocast_enabled("cpu")
    S = linalg.svd(_mat(model.layer3[1].conv1)).S
    assert float(S[5] / S[0]) < 1e-5  # a bf16 product would leave ~1e-3


# FLOPs reduction of the rank rule before training, as the official code prints it (or, for ResNet-18 and
# ResNet-50, the compact FLOPs of the official README): our counting and rank rule must agree with them.
@pytest.mark.parametrize("recipe,reduction", [
    ("cifar10_resnet56_lrpet.yaml", 0.510), ("cifar10_resnet56_lrpet_goal080.yaml", 0.791),
    ("cifar10_resnet110_lrpet.yaml", 0.582), ("imagenet_resnet50_lrpet.yaml", 1 - 1.90 / 4.09),
    ("imagenet_resnet18_lrpet.yaml", 1 - 0.86 / 1.81),
])
def test_recipes_build_and_match_the_official_flops_reduction(recipe, reduction):
    cfg = load_recipe(Path(__file__).parents[1] / "recipes" / recipe)
    with torch.device("meta"):  # shapes only: nothing is computed
        model = models.create(cfg["model"]["name"])
    params = {k: v for k, v in cfg["method"].items() if k != "name"}
    method = create_method(cfg["method"]["name"], model, **params)
    assert set(method.ranks()) == set(_convs(model))
    plan = lr.plan(model, rank=method.ranks(), input_size=method.input_size, linear=False)
    kept = sum(d.flops for d in plan) / sum(d.dense_flops for d in plan)
    assert 1 - kept == pytest.approx(reduction, abs=0.005)


def test_a_run_ending_between_projections_logs_finalizes_projection_in_ranks_csv(tmp_path, monkeypatch):
    from lrtrain.train import Trainer
    from lrtrain.train.rank_log import RankLog

    handed = []  # the rows the trainer hands to ranks.csv, which keeps those that change a rank
    append = RankLog.append
    monkeypatch.setattr(RankLog, "append", lambda self, rows: (handed.extend(rows), append(self, rows)))
    cfg = load_recipe(Path(__file__).parents[1] / "recipes" / "cifar10_resnet56_lrpet.yaml", [
        "model.name=resnet20", "data.name=sample", "data.train_size=64", "data.test_size=32", "data.image_size=8",
        "data.batch_size=16", "train.epochs=2", "train.progress=false", "train.device=cpu", f"out_dir={tmp_path}",
        "method.period=5"])  # projections after step 5, and by finalize after step 8
    summary = Trainer(cfg).fit()
    steps = [row["step"] for row in handed]
    assert summary["steps"] == 8 and sorted(set(steps)) == [5, 8] and steps.count(5) == steps.count(8)
    written = [line.split(",")[0] for line in (tmp_path / "ranks.csv").read_text().splitlines()[1:]]
    assert set(written) == {"5"} and len(written) == steps.count(5)  # LRPET's ranks are fixed: step 8 repeats them
