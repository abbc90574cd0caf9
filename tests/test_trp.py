import csv
import io
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import lrtrain as lr
from lrtrain import linalg, models
from lrtrain.config import load_recipe
from lrtrain.methods.matrices import WeightGroup
from lrtrain.layers import LowRankConv2d
from lrtrain.methods import create_method
from lrtrain.methods.trp import TRP
from lrtrain.schemes import get_scheme
from lrtrain.train.trainer import Trainer

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SIZE = (1, 3, 8, 8)


def _net(width=8, seed=0, dtype=torch.float32):
    """Convs named "0", "3", "6" (3×3), "9" (3×3, stride 2), "12" (1×1); the classifier is "16"."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.Conv2d(2 * width, 2 * width, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 4),
    ).to(dtype)


def _data(n=256, seed=0):
    """Four classes, each a fixed random 3×8×8 pattern plus noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(4, 3, 8, 8, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    return protos[y] + 0.5 * torch.randn(n, 3, 8, 8, generator=g), y


def _train(method, opt, x, y, steps, batch=32, start=0):
    losses = []
    for i in range(start, start + steps):
        j = (i * batch) % len(x)
        loss = nn.functional.cross_entropy(method.model(x[j:j + batch]), y[j:j + batch])
        loss.backward()
        method.before_step()
        opt.step()
        opt.zero_grad()
        method.after_step()
        losses.append(loss.item())
    return losses


def _matrix(method, name):
    return method.scheme.to_matrix(method.model.get_submodule(name).weight.detach())


@pytest.mark.parametrize("scheme", ["channel", "spatial", "decoupled"])
@pytest.mark.parametrize("subgradient", ["svd", "newton_schulz"])
def test_subgradient_is_autograd_gradient_of_nuclear_norm(scheme, subgradient):
    model = _net(dtype=torch.float64)
    lam = 0.01
    method = TRP(model, scheme=scheme, nuclear=lam, period=0, subgradient=subgradient, input_size=SIZE)
    convs = [model.get_submodule(n) for n in method.layers]
    reg = lam * sum(torch.linalg.matrix_norm(method.scheme.to_matrix(c.weight), "nuc").sum() for c in convs)
    expected = torch.autograd.grad(reg, [c.weight for c in convs])
    method.before_step()  # no loss gradient yet: the grads are the sub-gradient alone
    tol = 1e-10 if subgradient == "svd" else 1e-8  # Newton–Schulz stops after a fixed number of steps
    for c, e in zip(convs, expected):
        mat = method.scheme.to_matrix(c.weight.detach())
        assert torch.linalg.matrix_rank(mat).min() == min(mat.shape[-2:])  # full rank: the gradient is unique
        torch.testing.assert_close(c.weight.grad, e, atol=tol * lam, rtol=0)
    assert model[-1].weight.grad is None  # the classifier is not regularized


def test_auto_subgradient_is_the_svds_on_the_cpu_and_newton_schulz_elsewhere(monkeypatch):
    model = _net()
    auto = TRP(model, nuclear=0.01, period=0, input_size=SIZE)
    assert auto.subgradient == "auto"
    svd = TRP(_net(), nuclear=0.01, period=0, subgradient="svd", input_size=SIZE)
    mats = auto._groups[0].matrices()
    assert torch.equal(auto._subgradient(mats), svd._subgradient(mats))
    called = []
    monkeypatch.setattr(linalg, "polar_newton_schulz", lambda m, **kw: called.append(m.device.type) or m)
    meta = mats.to("meta")  # a device other than the CPU (cuSOLVER's SVD would wait for it)
    assert auto._subgradient(meta) is meta and called == ["meta"]
    half = mats.to("meta", torch.bfloat16)  # but half-precision weights take the SVD path: a projected
    auto._subgradient(half)  # weight's cut directions stay at their rounding, which Newton–Schulz would keep
    assert called == ["meta"]


@pytest.mark.parametrize("scheme", ["channel", "spatial", "decoupled"])
def test_projection_keeps_energy_rank_and_is_idempotent_at_its_ranks(scheme):
    method = TRP(_net(dtype=torch.float64), scheme=scheme, energy=0.8, input_size=SIZE)
    before = {n: torch.linalg.svdvals(_matrix(method, n)) for n in method.layers}
    ranks = method.project()
    for name in method.layers:
        expected = linalg.energy_rank(before[name], 0.8)  # one rank per filter for the decoupled scheme
        mat = _matrix(method, name)
        assert torch.equal(torch.linalg.matrix_rank(mat, rtol=1e-9), expected)
        assert ranks[name] == int(expected.max()) <= method._max_rank[name]
        torch.testing.assert_close(linalg.project(mat, expected), mat, atol=1e-12, rtol=0)
    assert method.ranks() == ranks and sum(ranks.values()) < sum(method._max_rank.values())
    assert [r["layer"] for r in method.rank_log] == method.layers
    assert all(r["step"] == 0 and r["rank"] == ranks[r["layer"]] for r in method.rank_log)

    # Re-applying the energy rule measures the energy of the truncated weight, so it may cut further
    # (σ = 3, 1, 0.2 at e = 0.9 keeps 2, then 1): it never raises a rank, and a weight whose rank it
    # keeps is left as it was.
    first = {n: _matrix(method, n).clone() for n in method.layers}
    again = method.project()
    for name in method.layers:
        assert again[name] <= ranks[name]
        r2 = linalg.energy_rank(torch.linalg.svdvals(first[name]), 0.8)
        torch.testing.assert_close(_matrix(method, name), linalg.project(first[name], r2), atol=1e-12, rtol=0)


def test_energy_rule_is_not_idempotent_on_a_projected_spectrum():
    S = torch.tensor([3.0, 1.0, 0.2], dtype=torch.float64)
    r = int(linalg.energy_rank(S, 0.9))
    assert r == 2 and int(linalg.energy_rank(S[:r], 0.9)) == 1


def test_projection_step_is_every_period_and_sub_gradient_follows_it():
    model = _net()
    method = TRP(model, period=3, nuclear=0.5, subgradient="projection", input_size=SIZE)
    conv = model[3]
    for step in range(1, 7):
        conv.weight.grad = torch.zeros_like(conv.weight)
        method.before_step()
        if step in (1, 2, 3, 5, 6):  # no projection before these steps: no sub-gradient
            assert conv.weight.grad.abs().max() == 0
        else:  # step 4 follows the projection at step 3: λ·U_r V_rᵀ of the projected weight
            U, S, Vh = torch.linalg.svd(_matrix(method, "3").double(), full_matrices=False)
            keep = S > 1e-4 * S[0]
            assert keep.sum() == method.ranks()["3"] < 8
            expected = 0.5 * (U[:, keep] @ Vh[keep]).reshape(conv.weight.shape)
            torch.testing.assert_close(conv.weight.grad.double(), expected, atol=1e-5, rtol=0)
        method.after_step()
        assert method.bn_stale == (step in (3, 6))  # BatchNorm statistics lag the weights just projected
    assert sorted({r["step"] for r in method.rank_log}) == [3, 6]


def test_official_decoupling_paths_match_the_decoupled_layer():
    """The official network decoupling: r paths, each a 1×1 conv c→n then a depthwise k×k conv, summed."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, stride=2, padding=1, bias=False).double()
    w = conv.weight.detach()
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    for r in (2, 6):  # truncated, and full rank min(c, k²) = 6 where it is exact
        U, S, Vh = torch.linalg.svd(w.reshape(5, 6, 9), full_matrices=False)
        root = S[:, :r].sqrt()
        out = 0
        for j in range(r):
            pw = (U[:, :, j] * root[:, j:j + 1]).reshape(5, 6, 1, 1)
            dw = (root[:, j:j + 1] * Vh[:, j]).reshape(5, 1, 3, 3)
            out = out + nn.functional.conv2d(nn.functional.conv2d(x, pw), dw, None, 2, 1, 1, 5)
        low = LowRankConv2d.from_dense(conv, r, "decoupled")
        torch.testing.assert_close(low(x), out)
        if r == 6:
            torch.testing.assert_close(low(x), conv(x))


@pytest.mark.parametrize("scheme", ["channel", "spatial", "decoupled"])
def test_short_training_lowers_loss_and_ranks(scheme):
    x, y = _data()
    totals = {}
    for nuclear in (0.0, 1e-2):
        model = _net(width=16)
        method = create_method("trp", model, scheme=scheme, energy=0.9, period=5, nuclear=nuclear, input_size=SIZE)
        method.setup(steps_per_epoch=8, total_steps=30)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        losses = _train(method, opt, x, y, 30)
        assert sum(losses[-8:]) < 0.2 * sum(losses[:8])
        steps = sorted({r["step"] for r in method.rank_log})
        assert steps == list(range(5, 31, 5))
        totals[nuclear] = {s: sum(r["rank"] for r in method.rank_log if r["step"] == s) for s in steps}
        assert totals[nuclear][30] < totals[nuclear][5] < sum(method._max_rank.values())
    assert totals[1e-2][30] < totals[0.0][30]  # the nuclear term conditions the weights to lower ranks


@pytest.mark.parametrize("scheme", ["channel", "spatial", "decoupled"])
def test_finalize_at_last_projection_ranks_is_exact_and_saves_flops(scheme):
    x, y = _data(64)
    model = _net(width=16)
    method = TRP(model, scheme=scheme, energy=0.6, period=4, input_size=SIZE)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _train(method, opt, x, y, 8)  # ends on a projection
    model.eval()
    compact = method.finalize(method.ranks())
    assert compact is not model and not any(isinstance(m, LowRankConv2d) for m in model.modules())
    torch.testing.assert_close(compact(x), model(x), atol=1e-4, rtol=0)
    decisions = {d.name: d for d in lr.plan(model, method.ranks(), scheme, input_size=SIZE, linear=False)}
    dense, small = lr.count(model, SIZE), lr.count(compact, SIZE)
    saved = sum(d.dense_flops - d.flops for d in decisions.values())
    assert saved > 0 and small.flops == dense.flops - saved
    for name, d in decisions.items():
        low = compact.get_submodule(name)
        assert isinstance(low, LowRankConv2d) == d.factorize
        if d.factorize:
            assert low.rank == method.ranks()[name] and d.flops < d.dense_flops


def test_finalize_default_policies_follow_the_official_rules():
    torch.manual_seed(1)
    model = _net(width=32)
    with torch.no_grad():  # filters of decreasing norm, whose spectra decay at different rates
        for name in ("3", "6"):
            conv = model.get_submodule(name)
            decay = torch.linspace(0.3, 0.8, 32).view(32, 1) ** torch.arange(9.0)
            U = torch.linalg.qr(torch.randn(32, 32, 9)).Q
            V = torch.linalg.qr(torch.randn(32, 9, 9)).Q
            norms = torch.logspace(0, -2, 32).view(32, 1, 1)
            conv.weight.copy_((norms * (U * decay.unsqueeze(1)) @ V.mT).reshape(32, 32, 3, 3))
    channel = TRP(model, input_size=SIZE).finalize()
    for name in ("3", "6"):
        S = torch.linalg.svdvals(get_scheme("channel").to_matrix(model.get_submodule(name).weight.detach()))
        assert channel.get_submodule(name).rank == int((S >= 0.05).sum()) < 32
    decoupled = TRP(model, scheme="decoupled", input_size=SIZE).finalize()
    for name in ("3", "6"):
        S = torch.linalg.svdvals(model.get_submodule(name).weight.detach().reshape(32, 32, 9))
        per_filter = linalg.energy_rank(S, 0.85)
        assert per_filter.min() < per_filter.max()  # the layer takes what its most demanding filter needs
        assert decoupled.get_submodule(name).rank == int(per_filter.max())


def test_finalize_with_flops_budget_meets_it():
    model = models.create("resnet20")
    method = TRP(model, final="flops:0.5", input_size=SIZE)
    dense = lr.count(model, SIZE).flops
    assert lr.count(method.finalize(), SIZE).flops <= 0.5 * dense
    assert lr.count(method.finalize("energy:0.5"), SIZE).flops < dense


def test_eligibility_presets_and_skip():
    model = models.create("resnet20")
    default = TRP(model, input_size=SIZE)
    assert "conv1" in default.layers and "layer2.0.conv1" in default.layers and len(default.layers) == 19
    official = TRP(model, eligible="official")
    assert "conv1" not in official.layers and "layer2.0.conv1" in official.layers
    compact = official.finalize("energy:0.5")
    assert isinstance(compact.layer2[0].conv1, nn.Conv2d)  # stride 2: trained, but left dense at the end
    assert isinstance(compact.layer2[0].conv2, LowRankConv2d)
    assert isinstance(official.finalize("energy:0.5").conv1, nn.Conv2d)
    # network decoupling decomposes them (its 1×1 factor runs before the stride: rank 1 is cheaper than dense)
    decoupled = TRP(model, scheme="decoupled", eligible="official").finalize("fixed:1")
    assert isinstance(decoupled.layer2[0].conv1, LowRankConv2d) and isinstance(decoupled.conv1, nn.Conv2d)
    skipped = TRP(model, skip=["layer3.*", "conv1"])
    assert not any(n.startswith("layer3") or n == "conv1" for n in skipped.layers) and len(skipped.layers) == 12
    net = _net()  # a 1×1 conv is eligible under channel by default, not in the official preset
    assert "12" in TRP(net, input_size=SIZE).layers
    assert "12" not in TRP(net, eligible="official", input_size=SIZE).layers
    assert "12" not in TRP(net, scheme="spatial", input_size=SIZE).layers


def test_bad_arguments_name_the_problem():
    net = _net()
    with pytest.raises(ValueError, match="tucker2.*valid schemes: channel, spatial, decoupled"):
        TRP(net, scheme="tucker2", input_size=SIZE)
    with pytest.raises(ValueError, match="'offical'.*default, official"):
        TRP(net, eligible="offical", input_size=SIZE)
    with pytest.raises(ValueError, match="'qr'.*svd, newton_schulz, projection"):
        TRP(net, subgradient="qr", input_size=SIZE)
    with pytest.raises(ValueError, match="period=0 never projects"):
        TRP(net, period=0, subgradient="projection", input_size=SIZE)
    with pytest.raises(ValueError, match="energy must be in"):
        TRP(net, energy=1.5, input_size=SIZE)
    with pytest.raises(ValueError, match="no conv of the model is eligible"):
        TRP(net, skip=["*"], input_size=SIZE)
    with pytest.raises(ValueError, match=r"\['12'\] are not among"):
        TRP(net, eligible="official", input_size=SIZE).finalize({"12": 2})


@pytest.mark.parametrize("subgradient, overlap", [("svd", False), ("newton_schulz", False), ("projection", False),
                                                  ("projection", True)])
def test_steps_without_projection_never_read_values_back(subgradient, overlap, monkeypatch):
    x, y = _data(64)
    model = _net()
    method = TRP(model, period=4, subgradient=subgradient, input_size=SIZE, overlap=overlap)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    # the projection of step 4 (with overlap: sent at step 3 of a 3-period, truncated at 4) is done; the
    # next step uses its pending sub-gradient
    _train(method, opt, x, y, 4 + overlap)

    def sync(*args, **kwargs):
        raise AssertionError("host sync in a step that does not project")

    for attr in ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, attr, sync)
    # steps 5-7; with overlap, steps 6-8, whose last sends a projection without waiting for it
    for i in range(3):
        nn.functional.cross_entropy(model(x[:16]), y[:16]).backward()
        method.before_step()
        opt.step()
        opt.zero_grad()
        method.after_step()
    monkeypatch.undo()
    assert method.step == 7 + overlap and (method._inflight is not None) == overlap


def _resumed(fresh, buf: io.BytesIO):
    """A model, SGD optimizer and method built by `fresh()` and loaded from a checkpoint in `buf`."""
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model, method = fresh()
    model.load_state_dict(ckpt["model"])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    opt.load_state_dict(ckpt["opt"])
    method.load_state_dict(ckpt["method"])
    return model, opt, method


@pytest.mark.parametrize("overlap", [False, True])
def test_state_dict_round_trip_resumes_identically(overlap):
    x, y = _data(128)

    def fresh():
        model = _net()
        return model, TRP(model, period=3, nuclear=1e-2, input_size=SIZE, overlap=overlap)

    model, method = fresh()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    # step 6 projects: a sub-gradient is pending for step 7 (with overlap: for step 6, from the truncation
    # after step 4 of the weights sent after step 3, and step 6's projection is in flight)
    _train(method, opt, x, y, 6)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "method": method.state_dict()}, buf)
    rows = len(method.rank_log)
    _train(method, opt, x, y, 5, start=6)

    model2, opt2, method2 = _resumed(fresh, buf)
    assert method2.step == 6 and method2.ranks() == {r["layer"]: r["rank"] for r in method.rank_log[rows - 5:rows]}
    assert (method2._inflight is not None) == overlap
    _train(method2, opt2, x, y, 5, start=6)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert method2.rank_log == method.rank_log[rows:]


TRP_RECIPES = {  # recipe: (model, scheme, period, final policy)
    "cifar10_resnet20_trp_channel.yaml": ("resnet20", "channel", 5, "Threshold(0.05)"),
    "cifar10_resnet20_trp_spatial.yaml": ("resnet20", "spatial", 5, "Threshold(0.05)"),
    "cifar10_resnet20_trp_decoupled.yaml": ("resnet20", "decoupled", 5, "Energy(0.85)"),
    "cifar10_resnet32_trp_channel.yaml": ("resnet32", "channel", 5, "Threshold(0.05)"),
    "cifar10_resnet32_trp_spatial.yaml": ("resnet32", "spatial", 5, "Threshold(0.05)"),
    "cifar10_resnet56_trp_channel.yaml": ("resnet56", "channel", 5, "Threshold(0.05)"),
    "cifar10_resnet20_nuclear_only.yaml": ("resnet20", "channel", 0, "Energy(0.85)"),
}


@pytest.mark.parametrize("recipe", sorted(TRP_RECIPES))
def test_recipes_follow_the_official_protocol(recipe):
    model_name, scheme, period, final = TRP_RECIPES[recipe]
    cfg = load_recipe(RECIPES / recipe)
    assert cfg["model"]["name"] == model_name and cfg["train"]["epochs"] == 164
    assert cfg["schedule"]["milestones"] == [81, 122] and cfg["optim"]["weight_decay"] == 1e-4
    assert cfg["data"]["batch_size"] == 128 and cfg["optim"]["lr"] == 0.1
    with torch.device("meta"):  # shapes only
        model = models.create(model_name)
    method = create_method("trp", model, **{k: v for k, v in cfg["method"].items() if k != "name"})
    assert (method.scheme.name, method.period, method.nuclear, method.energy) == (scheme, period, 3e-4, 0.9)
    assert repr(method.final) == final
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(method.layers) == sorted(convs[1:])  # every 3×3 conv but the stem (no 1×1 convs here)


@pytest.mark.parametrize("overlap", [False, True])
def test_trainer_runs_a_trp_recipe_and_writes_ranks(tmp_path, overlap):
    cfg = load_recipe(RECIPES / "cifar10_resnet20_trp_channel.yaml", [
        "data.name=sample", "data.train_size=64", "data.test_size=32", "data.image_size=8", "data.batch_size=16",
        "train.epochs=2", "train.progress=false", "train.device=cpu", f"out_dir={tmp_path}",
        "method.final=energy:0.5", f"method.overlap={str(overlap).lower()}"])
    # (8 steps leave σ ≥ 0.05 everywhere: the official threshold would keep all)
    summary = Trainer(cfg).fit()
    with open(tmp_path / "ranks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # 8 steps, one projection (with overlap: sent after step 5, written after step 6)
    assert {r["step"] for r in rows} == {"6" if overlap else "5"} and len(rows) == 18
    assert all(int(r["rank"]) < int(r["max_rank"]) for r in rows)
    assert summary["speedup"] > 1 and summary["ranks"] == {r["layer"]: int(r["rank"]) for r in rows}
    compact = lr.load(tmp_path / "compact.pt")
    assert summary["compact_ranks"] == {n: m.rank for n, m in compact.named_modules() if isinstance(m, LowRankConv2d)}
    # the final energy:0.5 cut goes below the last projection's 0.9-energy ranks
    assert all(r <= summary["ranks"][n] for n, r in summary["compact_ranks"].items())
    assert summary["compact_ranks"] != {n: summary["ranks"][n] for n in summary["compact_ranks"]}


def test_global_rank_policy_projects_to_the_flops_budget():
    model = lr.models.create("resnet20")
    dense = lr.count(model).flops
    method = TRP(model, scheme="channel", period=1, nuclear=0.0, rank="flops:0.45", final="flops:0.45")
    method.project()
    compact = method.finalize(method.ranks())
    assert lr.count(compact).flops <= 0.45 * dense
    # the projected weights already have those ranks: decomposing at them changes nothing
    x = torch.randn(2, 3, 32, 32)
    model.eval(), compact.eval()
    torch.testing.assert_close(compact(x), model(x), atol=1e-4, rtol=1e-4)


def test_a_budget_projection_computes_each_layers_cost_once_per_rank_across_projections():
    """A FLOPs budget every `period` steps asks the same costs each time; they are computed once (the
    ResNet-56 ramp's projections took 4.5x the energy rule's host time before)."""
    import copy
    import pickle

    def build():
        return TRP(lr.models.create("resnet20"), scheme="spatial", period=1, nuclear=0.0, rank="flops:0.45")

    method = build()
    assert pickle.loads(pickle.dumps(method._requests)).keys() == method._requests.keys()  # still picklable
    computed = []
    for name, req in method._requests.items():  # record what the remembered costs compute
        req.cost.cost = (lambda f, n: lambda r: computed.append((n, str(r))) or f(r))(req.cost.cost, name)
    method.project()
    assert computed and len(computed) == len(set(computed))  # no (layer, rank) computed twice
    asked = len(computed)
    with torch.no_grad():  # other spectra, so the budget weighs other ranks
        for conv in method.model.modules():
            if isinstance(conv, nn.Conv2d):
                conv.weight.mul_(torch.rand_like(conv.weight))
    fresh = build()
    fresh.model.load_state_dict(copy.deepcopy(method.model.state_dict()))
    second = method.project()
    assert len(computed) == asked  # every cost the second projection needed was known
    assert second == fresh.project()  # remembered costs choose what computed ones do


def test_a_sub_gradient_on_a_weight_without_gradient_is_laid_out_like_the_weight():
    from lrtrain.methods.matrices import group_weights
    from lrtrain.schemes import get_scheme

    conv = nn.Conv2d(4, 6, 3).to(memory_format=torch.channels_last)
    group = group_weights([("c", conv)], get_scheme("channel"))[0]
    delta = torch.randn(1, 6, 36)
    group.add_to_grad(delta)
    assert conv.weight.grad.stride() == conv.weight.stride()  # fused CUDA optimizers require it
    torch.testing.assert_close(conv.weight.grad.flatten(1), delta[0])


def test_a_per_layer_rank_policy_on_the_decoupled_scheme_takes_the_most_demanding_filter():
    by_rule = TRP(_net(), scheme="decoupled", energy=0.7, period=1, nuclear=0.0, input_size=SIZE)
    by_policy = TRP(_net(), scheme="decoupled", rank="energy:0.7", period=1, nuclear=0.0, input_size=SIZE)
    assert by_rule.project() == by_policy.project()  # not the rank of the filters' pooled spectrum
    assert any(r < by_rule._max_rank[n] for n, r in by_rule.ranks().items())


def test_a_preset_that_leaves_no_conv_says_so():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.LazyLinear(2))
    net(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"preset 'official' \(2 factorizable conv\(s\), but the preset keeps only "
                                         r"3x3 convs other than the first\)"):
        TRP(net, eligible="official", input_size=SIZE)


def _flops_at(method, ranks):
    return method._fixed_cost + sum(min(method._requests[n].cost(r), method._requests[n].dense_cost)
                                    for n, r in ranks.items())  # a layer kept whole costs dense


def test_a_ramp_tightens_the_projection_budget_linearly_then_holds_the_target():
    model = lr.models.create("resnet20")
    method = TRP(model, scheme="channel", period=1, nuclear=0.0, rank="flops:0.4", ramp=0.5)
    method.setup(steps_per_epoch=10, total_steps=100)
    dense = lr.count(model).flops
    assert method.projection_policy().fraction == 1.0
    history = []
    for step in (10, 25, 50, 80):
        method.step = step
        history.append(method.project())
        budget = 1 - 0.6 * min(1.0, step / 50)
        assert method.projection_policy().fraction == pytest.approx(budget)
        assert _flops_at(method, history[-1]) <= budget * dense
    # the budget was loose at first: more rank than the target allows, then exactly the target's
    assert _flops_at(method, history[0]) > 0.8 * dense
    assert 0.38 * dense < _flops_at(method, history[-1]) <= 0.4 * dense
    # a projected weight has no energy beyond its rank: ranks only fall along the ramp
    for before, after in zip(history, history[1:]):
        assert all(after[n] <= before[n] for n in before)


def test_a_ramp_keeps_the_budgets_multiple_and_projects_to_aligned_ranks():
    model = lr.models.create("resnet20")
    method = TRP(model, scheme="channel", period=1, nuclear=0.0, rank="flops:0.5,multiple:8", ramp=0.5)
    method.setup(steps_per_epoch=10, total_steps=100)
    method.step = 40
    assert method.projection_policy().multiple == 8
    ranks = method.project()
    assert all(r % 8 == 0 for r in ranks.values())
    assert _flops_at(method, ranks) <= method.projection_policy().fraction * lr.count(model).flops
    with pytest.raises(ValueError, match="at rank 16 everywhere"):
        TRP(lr.models.create("resnet20"), rank="flops:0.4,multiple:16")
    # the default final cut is the projections' budget, aligned alike (the σ < 0.05 rule kept more than
    # a projection a few steps before a loop's end: 0.63 of the dense FLOPs for a 0.45 budget)
    assert method.final is method.rank_policy
    compact = method.finalize()
    assert lr.count(compact).flops <= 0.5 * lr.count(model).flops
    kept = [m.rank for m in compact.modules() if isinstance(m, lr.LowRankConv2d)]
    assert kept and all(r % 8 == 0 for r in kept)
    assert repr(TRP(lr.models.create("resnet20")).final) == "Threshold(0.05)"
    assert repr(TRP(lr.models.create("resnet20"), scheme="decoupled").final) == "Energy(0.85)"


def test_without_a_ramp_the_first_projection_already_meets_the_target():
    model = lr.models.create("resnet20")
    method = TRP(model, scheme="channel", period=1, nuclear=0.0, rank="flops:0.4")
    method.step = 1
    assert _flops_at(method, method.project()) <= 0.4 * lr.count(model).flops


@pytest.mark.parametrize("kwargs, match", [
    ({"ramp": 0.3}, r"ramp tightens a FLOPs budget, so it needs rank='flops:F' \(got rank=None\)"),
    ({"ramp": 0.3, "rank": "energy:0.9"}, r"needs rank='flops:F' \(got rank='energy:0.9'\)"),
    ({"ramp": 1.5, "rank": "flops:0.5"}, r"ramp is a fraction of training in \[0, 1\], got 1.5"),
])
def test_bad_ramps_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TRP(_net(), input_size=SIZE, **kwargs)


def test_a_ramp_without_the_run_length_says_what_is_missing():
    method = TRP(_net(), input_size=SIZE, period=1, nuclear=0.0, rank="flops:0.6", ramp=0.2)
    with pytest.raises(RuntimeError, match=r"a ramp needs the run's length: call setup"):
        method.after_step()


def test_imagenet_recipe_fine_tunes_pretrained_weights_to_the_papers_speedup():
    cfg = load_recipe(RECIPES / "imagenet_resnet50_trp_channel.yaml")
    assert cfg["model"]["weights"] and cfg["optim"]["lr"] == 1e-4 and cfg["train"]["epochs"] == 10
    params = dict(cfg["method"])
    method = create_method(params.pop("name"), lr.models.create(cfg["model"]["name"]), **params)
    assert len(method.layers) == 53  # every conv of ResNet-50 whose factorized form can be cheaper
    method.setup(steps_per_epoch=100, total_steps=1000)
    method.step = 500  # the ramp's end: the budget of the paper's 1.80x from then on
    assert 1 / method.projection_policy().fraction == pytest.approx(1.80, abs=0.005)


def _step(method, opt, x, y):
    """One step up to and including the optimizer's; the caller calls `after_step`."""
    nn.functional.cross_entropy(method.model(x), y).backward()
    method.before_step()
    opt.step()
    opt.zero_grad()


def test_overlap_truncates_the_next_weights_onto_the_sent_weights_kept_directions():
    x, y = _data(64)
    model = _net(width=16)
    method = TRP(model, energy=0.8, period=3, nuclear=1e-2, input_size=SIZE, overlap=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _train(method, opt, x, y, 2)
    _step(method, opt, x[:32], y[:32])
    sent = {n: _matrix(method, n).double() for n in method.layers}  # W_3, sent by step 3's after_step
    method.after_step()
    assert not method.rank_log and not method.bn_stale  # nothing written yet: BN statistics still fit
    assert all(torch.equal(_matrix(method, n).double(), w) for n, w in sent.items())
    _step(method, opt, x[32:], y[32:])
    stepped = {n: _matrix(method, n).double() for n in method.layers}  # W_4 before its truncation
    method.after_step()
    assert method.bn_stale and {r["step"] for r in method.rank_log} == {4}
    for name, w in sent.items():
        U, S, Vh = torch.linalg.svd(w, full_matrices=False)
        r = int(linalg.energy_rank(S, 0.8))
        assert method.ranks()[name] == r < len(S)
        left = w.shape[0] <= w.shape[1]  # the projector acts on the smaller side
        expected = U[:, :r] @ (U[:, :r].T @ stepped[name]) if left else (stepped[name] @ Vh[:r].T) @ Vh[:r]
        got = _matrix(method, name).double()
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        assert int(linalg.numerical_rank(torch.linalg.svdvals(got), 1e-5)) == r
        assert not torch.allclose(got, w, atol=1e-4)  # step 4 moved the weights within the kept subspace
    # step 5's sub-gradient is W_3's: λ·U_r V_rᵀ of its truncation
    conv = model[3]
    conv.weight.grad = torch.zeros_like(conv.weight)
    method.before_step()
    U, S, Vh = torch.linalg.svd(sent["3"], full_matrices=False)
    r = method.ranks()["3"]
    torch.testing.assert_close(conv.weight.grad.double(), 1e-2 * (U[:, :r] @ Vh[:r]).reshape(conv.weight.shape),
                               atol=1e-6, rtol=0)


def test_overlap_flushed_at_once_equals_the_exact_projection():
    x, y = _data(64)
    runs = []
    for overlap in (False, True):
        model = _net(width=16)
        method = TRP(model, energy=0.8, period=3, input_size=SIZE, overlap=overlap)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        _train(method, opt, x, y, 3)
        if overlap:
            assert not method.rank_log
            method.flush()
        runs.append((method.ranks(), [r["step"] for r in method.rank_log], model.state_dict()))
    (ranks, steps, weights), (ranks2, steps2, weights2) = runs
    assert ranks == ranks2 and steps == steps2 == [3] * 5
    for k in weights:
        torch.testing.assert_close(weights2[k], weights[k], atol=1e-6, rtol=0)


def test_finalize_applies_a_projection_still_in_flight():
    x, y = _data(64)
    model = _net(width=16)
    method = TRP(model, energy=0.6, period=4, input_size=SIZE, overlap=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _train(method, opt, x, y, 8)  # ends on a projection sent, not yet written
    before = {n: _matrix(method, n).clone() for n in method.layers}
    model.eval()
    method.finalize()
    assert {r["step"] for r in method.rank_log} == {5, 8} and method._inflight is None
    assert any(not torch.equal(_matrix(method, n), w) for n, w in before.items())
    compact = method.finalize(method.ranks())  # the ranks of the projection finalize wrote
    torch.testing.assert_close(compact(x), model(x), atol=1e-4, rtol=0)
    for name, rank in method.ranks().items():
        if isinstance(compact.get_submodule(name), LowRankConv2d):
            assert compact.get_submodule(name).rank == rank


def test_finalize_at_the_projection_ranks_under_the_official_preset_keeps_its_stride_2_convs_dense():
    x, y = _data(64)
    model = _net(width=16)
    method = TRP(model, eligible="official", energy=0.6, period=4, input_size=SIZE)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _train(method, opt, x, y, 4)
    assert "9" in method.ranks()  # the stride-2 conv is trained ...
    compact = method.finalize(method.ranks())
    assert type(compact.get_submodule("9")) is nn.Conv2d  # ... and left dense, as the official code does
    assert all(compact.get_submodule(n).rank == method.ranks()[n] for n in ("3", "6")
               if isinstance(compact.get_submodule(n), LowRankConv2d))
    with pytest.raises(ValueError, match=r"\['12'\] are not among"):  # not trained at all
        method.finalize({"12": 2})


@pytest.mark.parametrize("fraction", [0.5, 0.3])
def test_a_flops_budget_under_the_official_preset_is_met_by_the_compact_model(fraction):
    """The official preset trains the stride-2 convs but keeps them dense at the end: the budget counts
    them dense (it once counted them at their projected rank, and the compact model overran it: ResNet-20
    at flops:0.3 came out at 0.310), and they are projected by the energy rule."""
    torch.manual_seed(0)
    model = models.create("resnet20")
    method = TRP(model, eligible="official", rank=f"flops:{fraction}", period=1, nuclear=0.0, energy=0.9)
    kept_dense = sorted(set(method.layers) - set(method._final_names))
    assert kept_dense == ["layer2.0.conv1", "layer3.0.conv1"]
    spectra = {n: torch.linalg.svdvals(model.get_submodule(n).weight.detach().flatten(1)) for n in kept_dense}
    ranks = method.project()
    dense = lr.count(model).flops
    compact = method.finalize(ranks)
    assert fraction - 0.02 < lr.count(compact).flops / dense <= fraction
    for name in kept_dense:
        assert type(compact.get_submodule(name)) is nn.Conv2d
        assert ranks[name] == int(linalg.energy_rank(spectra[name], 0.9))


def test_a_bfloat16_weights_sub_gradient_after_a_projection_is_the_projections():
    """A projected weight written back in bfloat16 is numerically full rank at 1e-4·σ₁ (its round-off):
    the numerical rank's tolerance rises above it, so the sub-gradient of the next steps is still U_r V_rᵀ
    (it was the full polar factor, 0.24-0.61·λ away)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(32, 32, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))
    method = TRP(net.to(torch.bfloat16), energy=0.6, period=1, nuclear=1.0, input_size=(1, 3, 8, 8))
    method.project()
    for (left, right), group in zip(method._pending, method._groups):
        saved = left if right is None else left @ right
        fresh = method._subgradient(group.matrices(), group.names)
        assert (saved.float() - fresh.float()).abs().max() < 0.01  # bfloat16's own rounding of it


def test_an_unreachable_flops_budget_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"rank='flops:0.01' cannot be met: at rank 1 everywhere the model still "
                                         r"costs \d+\.\d% of its dense FLOPs"):
        TRP(_net(), rank="flops:0.01", ramp=0.5, input_size=SIZE)


def test_the_official_preset_leaves_option_b_shortcut_convs_dense():
    a = TRP(models.create("resnet20"), eligible="official")
    b = TRP(models.create("resnet20b"), eligible="official")
    assert a.layers == b.layers and not any("shortcut" in n for n in b.layers)  # 1×1 convs stay dense
    assert "layer2.0.shortcut.0" in TRP(models.create("resnet20b")).layers  # cheaper factorized: trained


def test_per_layer_ranks_given_as_the_global_policy_and_a_model_name_are_refused_clearly():
    with pytest.raises(ValueError, match="not ranks per layer .*final="):
        lr.TRP(models.create("resnet20"), rank={"layer1.0.conv1": 3})
    assert lr.TRP(models.create("resnet20"), rank={"flops": 0.5}).rank_policy.fraction == 0.5
    with pytest.raises(TypeError, match="takes a model .*lr.models.create"):
        lr.TRP("resnet20")


def test_a_final_cut_that_decomposes_nothing_says_so_in_trps_words():
    method = lr.TRP(models.create("resnet20"), nuclear=0.0)
    with pytest.warns(UserWarning, match="^TRP.finalize: no layer was decomposed") as caught:
        compact = method.finalize("energy:1.0")
    assert len(caught) == 1 and caught[0].filename == __file__  # pointed at the caller's line
    assert not any(isinstance(m, lr.LowRankConv2d) for m in compact.modules())
    assert "(TRP never projected: 0 training steps, fewer than its period 5;" in str(caught[0].message)
    for _ in range(5):
        method.after_step()  # the fifth projects
    with pytest.warns(UserWarning, match="^TRP.finalize: no layer was decomposed") as caught:
        method.finalize({name: method._max_rank[name] for name in method._final_names})  # full ranks
    assert "never projected" not in str(caught[0].message)


def test_methods_pickle_with_their_rank_requests():
    import pickle

    method = lr.TRP(models.create("resnet20"), rank="flops:0.5")
    copy = pickle.loads(pickle.dumps(method))
    request = next(iter(method._requests.values()))
    assert copy._requests[request.name].cost(3) == request.cost(3) > 0


@pytest.mark.parametrize("scheme", ["channel", "spatial", "decoupled"])
def test_the_pending_sub_gradient_is_kept_as_thin_factors_and_older_whole_ones_load(scheme):
    def after_projection():
        method = TRP(_net(), scheme=scheme, period=1, energy=0.6, nuclear=0.5, subgradient="projection",
                     input_size=SIZE)
        method.after_step()  # projects: a sub-gradient waits for the next step
        return method

    def next_gradients(method):
        for p in method.model.parameters():
            p.grad = torch.zeros_like(p)
        method.before_step()
        return {n: method.model.get_submodule(n).weight.grad for n in method.layers}

    method = after_projection()
    state, ranks = method.state_dict(), method.ranks()
    assert set(state["pending"]) == set(method.layers)
    thin = 0
    for name, pending in state["pending"].items():
        group = next(g for g in method._groups if name in g.names)
        width = max(ranks[n] for n in group.names)  # the largest rank of the layer's group
        m, n = _matrix(method, name).shape[-2:]
        if width * (m + n) < m * n:  # two factors smaller than their product
            assert pending["left"].shape[-1] == pending["right"].shape[-2] == width
            thin += 1
        else:
            assert pending.shape == _matrix(method, name).shape
    assert thin >= (3 if scheme != "decoupled" else 0)  # decoupled: 8×9 matrices per filter, ranks up to 8
    expected = next_gradients(method)
    assert all(g.abs().max() > 0 for g in expected.values())
    whole = {n: p["left"] @ p["right"] if isinstance(p, dict) else p  # as older checkpoints held it
             for n, p in state["pending"].items()}
    mixed = {n: whole[n] if i % 2 else p for i, (n, p) in enumerate(state["pending"].items())}
    for given in (state, {**state, "pending": whole}, {**state, "pending": mixed}):
        resumed = after_projection()
        resumed.load_state_dict(given)
        for name, grad in next_gradients(resumed).items():
            torch.testing.assert_close(grad, expected[name], atol=1e-6, rtol=0)


def test_a_tall_weights_factors_are_saved_alone_and_resume_bit_for_bit():
    """A widening 1×1 conv is tall in the channel form (32 × 8): its right factor is Vᵀ, which must be
    saved as its own small tensor (not the buffer of every group's bases) and multiply as after a resume."""
    x, y = _data(128)

    def fresh():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 32, 1), nn.ReLU(),
                              nn.Conv2d(32, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(8, 4))
        return model, TRP(model, period=3, energy=0.5, nuclear=1e-2, subgradient="projection", input_size=SIZE)

    model, method = fresh()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _train(method, opt, x, y, 6)  # step 6 projects: a sub-gradient waits for step 7
    state = method.state_dict()
    tall = state["pending"]["2"]
    assert isinstance(tall, dict) and tall["right"].shape == (method.ranks()["2"], 8)
    for pending in state["pending"].values():
        for t in (pending.values() if isinstance(pending, dict) else [pending]):
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size()  # nothing more is saved
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "method": state}, buf)
    _train(method, opt, x, y, 4, start=6)
    model2, opt2, method2 = _resumed(fresh, buf)
    _train(method2, opt2, x, y, 4, start=6)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_every_step_sub_gradient_of_a_projected_weight_is_its_truncations(dtype):
    """After a projection the weight has rank r up to its dtype's round-off (≈ eps·σ₁, not 0): the
    every-step SVD sub-gradient must count those round-off directions as zero (σ > tol·σ₁), so that it is
    λ·U_r V_rᵀ like the projection's own, not the full polar factor (its round-off directions add entries
    of order λ). Checked against an independent float64 SVD of the weight, truncated at the reported rank."""
    lam = 0.5
    tol = 1e-6 if dtype == torch.float32 else 1e-12  # the dtype's round-off on U_r V_rᵀ, with room
    net = _net(dtype=dtype)
    method = TRP(net, energy=0.6, period=0, nuclear=lam, subgradient="svd", input_size=SIZE)
    method.project()
    ranks = method.ranks()
    assert any(r < method._max_rank[n] for n, r in ranks.items())  # something was truncated

    def expected(name):
        U, _, Vh = torch.linalg.svd(_matrix(method, name).double(), full_matrices=False)
        r = ranks[name]
        return lam * U[:, :r] @ Vh[:r]

    for step in ("pending", "fresh"):  # the projection's own sub-gradient, then one the step computes
        net.zero_grad(set_to_none=True)
        method.before_step()
        for name in method.layers:
            grad = method.scheme.to_matrix(net.get_submodule(name).weight.grad).double()
            want = expected(name)
            err = (grad - want).abs().max() / lam
            assert err < tol, (step, name, ranks[name], float(err))


def test_a_float16_weights_pending_sub_gradient_does_not_overflow_at_small_singular_values():
    """The pending λ·U_r V_rᵀ scales by 1/σ: computed in float16, a kept σ below 1.5e-5 (1/σ past float16's
    65504) made it inf and the weights NaN one step later. It is computed in float32 and rounded once."""
    model = _net(width=16)
    with torch.no_grad():  # conv "3": σ from 3e-3 down to 1.3e-5, all above fp16's numerical-rank tolerance
        U, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)))
        V, _ = torch.linalg.qr(torch.randn(144, 16, generator=torch.Generator().manual_seed(2)))
        S = torch.logspace(math.log10(3e-3), math.log10(1.3e-5), 16)
        model[3].weight.copy_(((U * S) @ V.T).reshape(16, 16, 3, 3))
    model = model.half()
    lam = 1e-3
    method = TRP(model, energy=1.0, period=1, nuclear=lam, input_size=SIZE)
    method.after_step()  # a projection keeping every direction: the weight is its own truncation
    method.before_step()
    grad = method.scheme.to_matrix(model[3].weight.grad.double())
    U64, S64, Vh64 = torch.linalg.svd(method.scheme.to_matrix(model[3].weight.detach().double()), full_matrices=False)
    r = method.ranks()["3"]
    assert r == 16 and torch.isfinite(grad).all()
    torch.testing.assert_close(grad, lam * U64[:, :r] @ Vh64[:r], atol=2e-3 * lam, rtol=0)  # fp16 rounding


def test_a_skipped_step_keeps_the_projections_sub_gradient_for_the_next_one():
    """Under a GradScaler a step with inf gradients is skipped: `skip_step` in place of `after_step` leaves
    the step uncounted, and the next step adds the last projection's λ·U_r V_rᵀ the skipped one took."""
    model = _net()
    method = TRP(model, period=2, nuclear=0.01, subgradient="projection", input_size=SIZE)
    x, y = _data(16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    _train(method, opt, x, y, 2)  # the projection after step 2
    name = method.layers[0]
    weight = model.get_submodule(name).weight
    added = []
    for _ in range(2):  # the step right after the projection: skipped, then taken
        opt.zero_grad()
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        method.before_step()
        added.append(weight.grad.clone())
        if len(added) == 1:
            method.skip_step()
    assert method.step == 2 and added[0].abs().max() > 0
    assert torch.equal(added[0], added[1])
    method.after_step()
    opt.zero_grad()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    method.before_step()  # taken once: official mode adds nothing until the next projection
    assert method.step == 3 and weight.grad.abs().max() == 0


def test_a_run_resumed_where_a_default_changed_since_is_told(monkeypatch):
    """A checkpoint keeps the settings its method was built with; where a setting left at its default now
    has another default than the checkpoint's run had, loading it says so (a setting given is not warned of)."""
    state = TRP(_net(), period=2, input_size=SIZE).state_dict()
    assert state["settings"]["subgradient"] == "'auto'" and state["settings"]["period"] == "2"
    state["settings"].update(subgradient="'svd'", period="5")  # as if saved under other defaults
    with pytest.warns(UserWarning, match=r"TRP: resumed with settings left at their defaults that differ .*: "
                                         r"subgradient='auto' \(the checkpoint's run: 'svd'\); give them"):
        TRP(_net(), period=2, input_size=SIZE).load_state_dict(state)
    state["settings"]["subgradient"] = "'auto'"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # period was given (2): a setting of this run, not a changed default
        TRP(_net(), period=2, input_size=SIZE).load_state_dict(state)
        del state["settings"]  # a checkpoint from before settings were kept: nothing to compare
        TRP(_net(), period=2, input_size=SIZE).load_state_dict(state)


def test_on_a_gpu_every_groups_newton_schulz_runs_as_one_batch(monkeypatch):
    """Off the CPU the every-step polar factors of all shape groups are one padded batch (launches)."""
    method = TRP(_net(), nuclear=0.01, period=0, input_size=SIZE)
    assert len(method._groups) > 1
    batches, added = [], []
    monkeypatch.setattr(linalg, "polar_newton_schulz_many", lambda mats, **kw: batches.append(len(mats)) or mats)
    for group in method._groups:  # the weights as on another device (meta: shapes only)
        monkeypatch.setattr(group, "matrices", lambda g=group: WeightGroup.matrices(g).to("meta"))
        monkeypatch.setattr(group, "add_to_grad", lambda sub: added.append(sub.shape))
    method.before_step()
    assert batches == [len(method._groups)] and len(added) == len(method._groups)
