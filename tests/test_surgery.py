import copy

import pytest
import torch
from torch import nn

import lrtrain as lr
from lrtrain import linalg, metrics, models
from lrtrain.layers import LowRankConv2d, LowRankLinear
from lrtrain.schemes import get_scheme


def _decisions(model, **kw):
    return {d.name: d for d in lr.plan(model, **kw)}


def _truncated(w, rank, scheme):
    """The weight a factorization at `rank` should compute, from the dense one alone: its scheme's matrix
    form projected to `rank` (Eckart–Young), or, for Tucker-2, the HOSVD projection of both unfoldings."""
    if scheme.name != "tucker2":
        return scheme.from_matrix(linalg.project(scheme.to_matrix(w), rank), w.shape)
    r_in, r_out = rank
    n, c = w.shape[:2]
    Uo = torch.linalg.svd(w.reshape(n, -1), full_matrices=False).U[:, :r_out]
    Ui = torch.linalg.svd(w.transpose(0, 1).reshape(c, -1), full_matrices=False).U[:, :r_in]
    return torch.einsum("nchw,na,ma,cb,db->mdhw", w, Uo, Uo, Ui, Ui)


@pytest.mark.parametrize("scheme", ["channel", "spatial", "decoupled", "tucker2"])
def test_factorize_resnet20_computes_the_truncated_model_and_is_never_costlier(scheme):
    """At a budget that factorizes most convs, the compact model is the dense one with each factorized
    layer's weight replaced by its truncation at the planned rank (so the factors carry the right
    directions, at the right rank, into the right place), and each factorized layer is cheaper."""
    torch.manual_seed(0)
    model = models.create("resnet20").double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    sch = get_scheme(scheme)
    plan = lr.plan(model, rank="flops:0.5", scheme=scheme)
    done = [d for d in plan if d.factorize]
    assert sum(d.kind == "conv" for d in done) >= 18  # every 3×3 conv of the blocks at least
    # every factorized layer is cheaper than its dense form, at a rank below its full one; skipped ones say why
    assert all(d.flops < d.dense_flops and d.rank != d.max_rank for d in done)
    assert all(d.reason for d in plan if not d.factorize)
    expected = copy.deepcopy(model)
    with torch.no_grad():
        for d in done:
            w = expected.get_submodule(d.name).weight
            w.copy_(linalg.project(w, d.rank) if d.kind == "linear" else _truncated(w, d.rank, sch))
    compact = lr.factorize(model, rank="flops:0.5", scheme=scheme)
    lowrank = {n for n, m in compact.named_modules() if isinstance(m, (LowRankConv2d, LowRankLinear))}
    assert lowrank == {d.name for d in done}
    assert all(compact.get_submodule(d.name).rank == d.rank for d in done)
    torch.testing.assert_close(compact(x), expected(x), atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("scheme", ["channel", "spatial", "decoupled", "tucker2"])
def test_factorize_resnet20_at_full_energy_changes_nothing_and_says_so(scheme):
    """At full rank no factorized form is cheaper than its conv: nothing is replaced, a warning says so."""
    torch.manual_seed(0)
    model = models.create("resnet20").double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ref = model(x)
    with pytest.warns(UserWarning, match="no layer of CifarResNet was factorized"):
        out = lr.factorize(model, rank="energy:1.0", scheme=scheme)
    assert not any(isinstance(m, (LowRankConv2d, LowRankLinear)) for m in out.modules())
    assert torch.equal(out(x), ref)


def test_spatial_skips_1x1_and_user_skip_list():
    model = models.create("resnet18")
    d = _decisions(model, rank=4, scheme="spatial", skip=["conv1", "layer4.*"], input_size=(1, 3, 64, 64))
    assert "1x1 conv" in d["layer2.0.downsample.0"].reason
    assert d["conv1"].reason == "in the skip list"
    assert d["layer4.1.conv2"].reason == "in the skip list"
    assert d["layer3.0.conv1"].factorize


def test_a_skip_pattern_that_matches_no_layer_is_refused_naming_the_layers():
    vgg = models.create("vgg16")
    with pytest.raises(ValueError, match=r"skip: 'conv1', 'head' match\(es\) no conv or linear layer of the "
                                         r"model \(its layers: features.0, features.3, "):
        lr.factorize(vgg, rank="flops:0.45", skip=["conv1", "head", "features.0"])
    compact = lr.factorize(models.create("resnet20"), rank="fixed:4")  # every layer
    # names of factorized layers match too (nothing is left to factorize there, and nothing is refused)
    assert lr.plan(compact, rank="flops:0.45", skip=["layer1.0.conv1", "fc"]) == []


def test_mobilenet_depthwise_convs_are_skipped_with_reason():
    model = models.create("mobilenet_v2")
    plan = lr.plan(model, rank="ratio:0.5", input_size=(1, 3, 64, 64))
    depthwise = [d for d in plan if "depthwise" in d.reason]
    assert len(depthwise) == 17
    lr.factorize(model, rank="ratio:0.5", input_size=(1, 3, 64, 64))
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_layer_costlier_when_factorized_stays_dense():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    d = _decisions(model, rank=16, input_size=(1, 3, 8, 8))
    assert not d["0"].factorize and "not less than dense" in d["0"].reason
    with pytest.warns(UserWarning, match=r"the model is unchanged \(0: rank 16 would cost"):
        lr.factorize(model, rank=16, input_size=(1, 3, 8, 8))
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[2], nn.Conv2d)


@pytest.mark.parametrize("name,size", [("resnet20", 32), ("resnet56", 32), ("vgg16", 32), ("resnet18", 64),
                                       ("resnet50", 64), ("mobilenet_v2", 64)])
def test_flops_budget_met_and_count_agrees_with_flop_counter(name, size):
    model = models.create(name)
    inp = (1, 3, size, size)
    dense = lr.count(model, inp).flops
    lr.factorize(model, rank=lr.FlopsBudget(0.5), input_size=inp)
    c = lr.count(model, inp)
    assert c.flops <= 0.5 * dense
    assert any(isinstance(m, (LowRankConv2d, LowRankLinear)) for m in model.modules())
    assert abs(c.flops - metrics.flop_counter_macs(model, inp)) <= 0.01 * c.flops


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_flops_budget_with_a_multiple_gives_aligned_ranks_within_budget(scheme):
    model = models.create("resnet20")
    dense = lr.count(model).flops
    lr.factorize(model, rank="flops:0.5,multiple:8", scheme=scheme)
    ranks = [m.rank for m in model.modules() if isinstance(m, (LowRankConv2d, LowRankLinear))]
    assert ranks and all(r % 8 == 0 for r in ranks)
    assert lr.count(model).flops <= 0.5 * dense


def test_explicit_ranks_and_errors():
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Conv2d(16, 16, 3, groups=16), nn.Flatten(), nn.LazyLinear(4))
    model(torch.zeros(1, 8, 10, 10))
    with pytest.raises(ValueError, match=r"'1' was given a rank but cannot be factorized: depthwise"):
        lr.factorize(model, rank={"1": 2}, input_size=(1, 8, 10, 10))
    with pytest.raises(ValueError, match=r"0: rank 40 is out of range .*1\.\.16"):
        lr.factorize(model, rank={"0": 40}, input_size=(1, 8, 10, 10))
    with pytest.raises(ValueError, match="no such conv/linear layer"):
        lr.factorize(model, rank={"nope": 2}, input_size=(1, 8, 10, 10))
    with pytest.raises(ValueError, match=r"read as \{layer: rank\}; for a policy write a string, e.g. 'flops:0.45'"):
        lr.factorize(model, rank={"flops": 0.45, "multiple": 8}, input_size=(1, 8, 10, 10))
    lr.factorize(model, rank={"0": 3}, input_size=(1, 8, 10, 10))
    assert isinstance(model[0], LowRankConv2d) and model[0].rank == 3
    assert isinstance(model[3], nn.Linear)


def test_a_compact_model_given_again_is_called_one():
    compact = nn.Sequential(LowRankConv2d(3, 16, 3, rank=4, padding=1), nn.Flatten(), LowRankLinear(16 * 64, 10, 4))
    with pytest.raises(ValueError, match=r"ELRT: no layer of Sequential can be factorized \(its 2 conv/linear "
                                         r"layer\(s\) are factorized already: it is a compact model\)"):
        lr.ELRT(compact, rank="ratio:0.5", skip=(), input_size=(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"no conv or linear layer\)"):
        lr.ELRT(nn.Sequential(nn.Flatten()), rank="ratio:0.5", skip=(), input_size=(1, 3, 8, 8))


def test_wrong_input_size_is_reported():
    with pytest.raises(ValueError, match="input_size"):
        lr.factorize(models.create("resnet20"), rank=4, input_size=(1, 1, 32, 32))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")  # torch's, about its own copy
def test_a_skipped_conv_with_string_padding_is_costed_at_its_real_output_size():
    net = nn.Sequential(nn.Conv2d(3, 8, 4, padding="same"), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1))
    cands, skipped = lr.surgery.candidates(net, "channel", input_size=(1, 3, 10, 10))
    assert [d.name for d in skipped] == ["0"] and "padding='same' with kernel (4, 4) pads one side" in skipped[0].reason
    assert skipped[0].dense_flops == lr.count(net, (1, 3, 10, 10)).layers["0"].flops == 8 * 3 * 16 * 100
    assert cands[0].request.dense_cost == lr.count(net, (1, 3, 10, 10)).layers["2"].flops


@pytest.mark.parametrize("padding, kernel, dilation", [("same", 3, 1), ("same", (5, 3), 2), ("valid", 3, 1)])
@pytest.mark.parametrize("scheme", ["channel", "spatial", "tucker2"])
def test_a_conv_with_even_string_padding_factorizes_exactly(padding, kernel, dilation, scheme):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, kernel, padding=padding, dilation=dilation).double()
    low = LowRankConv2d.from_dense(conv, LowRankConv2d.from_dense(conv, 1, scheme).max_rank, scheme)
    x = torch.randn(2, 6, 11, 12, dtype=torch.float64)
    torch.testing.assert_close(low(x), conv(x))
    torch.testing.assert_close(low.to_dense()(x), conv(x))


class _SharedBlock(nn.Module):
    """A 3×3 conv applied four times (weight sharing across depth) and a head conv applied twice."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.blk = nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Conv2d(32, 32, 3, padding=1)

    def forward(self, x):
        x = self.stem(x)
        for _ in range(4):
            x = torch.relu(self.blk(x))
        return self.head(self.head(x)).mean((2, 3))


@pytest.mark.parametrize("skip", [["stem", "blk"], ["stem"]])
def test_a_layer_called_several_times_is_costed_for_every_call(skip):
    torch.manual_seed(0)
    model, size = _SharedBlock(), (1, 3, 16, 16)
    dense = lr.count(model, size).flops
    plan = {d.name: d for d in lr.plan(model, lr.FlopsBudget(0.7), "channel", skip=skip, input_size=size)}
    assert plan["head"].dense_flops == lr.count(model, size).layers["head"].flops == 2 * 16 * 16 * 32 * 32 * 9
    small = lr.factorize(model, rank=lr.FlopsBudget(0.7), scheme="channel", skip=skip, input_size=size)
    flops = lr.count(small, size).flops
    assert flops <= 0.7 * dense and flops == sum(d.flops for d in plan.values())


def test_a_skip_pattern_given_as_one_string_is_one_pattern():
    model = models.create("resnet20")
    lr.factorize(model, rank="ratio:0.5", skip="conv1")
    assert isinstance(model.conv1, nn.Conv2d) and isinstance(model.layer1[0].conv1, LowRankConv2d)


def test_factorize_that_changes_nothing_warns_why():
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 10))
    with pytest.warns(UserWarning, match=r"no layer of Sequential was factorized, the model is unchanged "
                                         r"\(1: rank 10 would cost 580 MACs, not less than dense 480\)"):
        lr.factorize(model, rank="energy:1.0", input_size=(1, 3, 4, 4))


def _twice_used_conv_model():
    conv = nn.Conv2d(16, 16, 3, padding=1)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), conv, nn.ReLU(), conv,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def test_a_layer_registered_under_two_names_is_replaced_under_both_and_stays_shared():
    import copy

    torch.manual_seed(0)
    model = _twice_used_conv_model().double().eval()
    original = copy.deepcopy(model)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    planned = sum(d.flops for d in lr.plan(model, rank=4, input_size=(1, 3, 8, 8)))
    low = lr.factorize(model, rank=4, input_size=(1, 3, 8, 8))
    assert low[2] is low[4] and isinstance(low[4], LowRankConv2d)  # one layer, both calls
    assert not any(p.shape == (16, 16, 3, 3) for p in low.parameters())
    assert metrics.count(low, (1, 3, 8, 8)).flops == planned  # what the plan priced is what it built
    # both calls compute the truncated weight: the original with that weight in its one shared conv
    with torch.no_grad():
        original[2].weight.copy_(low[2].to_dense().weight)
        original[0].weight.copy_(low[0].to_dense().weight)
        original[7] = low[7]
    torch.testing.assert_close(low(x), original(x))


def test_elrt_on_a_layer_used_twice_leaves_no_dense_weight_and_meets_its_budget():
    torch.manual_seed(0)
    model = _twice_used_conv_model()
    dense = metrics.count(model, (1, 3, 8, 8)).flops
    method = lr.ELRT(model, rank="flops:0.5", skip=[], input_size=(1, 3, 8, 8))
    trained = method.model
    assert trained[2] is trained[4]
    assert not any(p.shape == (16, 16, 3, 3) for p in trained.parameters())
    assert metrics.count(trained, (1, 3, 8, 8)).flops <= 0.5 * dense


class _Standardized(nn.Conv2d):
    """A weight-standardized conv (as in timm's StdConv2d): the weight it applies is computed."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / w.std((1, 2, 3), keepdim=True)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


def _foreign_net():
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), _Standardized(32, 32, 3, padding=1), nn.ReLU(),
                         weight_norm(nn.Conv2d(32, 32, 3, padding=1)), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), weight_norm(nn.Linear(32, 10)))


def test_a_layer_that_applies_another_weight_than_it_stores_is_left_dense_with_its_reason():
    net = _foreign_net()
    decisions = _decisions(net, rank="ratio:0.5")
    assert "_Standardized computes its own forward" in decisions["2"].reason and not decisions["2"].factorize
    assert "parametrization" in decisions["4"].reason and "parametrization" in decisions["9"].reason
    assert decisions["6"].factorize
    with pytest.raises(ValueError, match="computes its own forward"):
        LowRankConv2d.from_dense(net[2], 16)
    with pytest.raises(ValueError, match="parametrization"):
        LowRankLinear.from_dense(net[9], 4)
    lr.factorize(net, rank="ratio:0.25", scheme="channel", input_size=(1, 3, 8, 8))
    assert isinstance(net[6], LowRankConv2d) and type(net[2]) is _Standardized  # the refused ones untouched
    assert hasattr(net[4], "parametrizations") and hasattr(net[9], "parametrizations")


def test_frozen_layers_stay_frozen_and_training_methods_leave_them_alone():
    net = _foreign_net()
    net[6].requires_grad_(False)
    assert not any(p.requires_grad for p in LowRankConv2d.from_dense(net[6], 8).parameters())
    assert all(p.requires_grad for p in LowRankConv2d.from_dense(net[0], 8).parameters())
    with pytest.raises(ValueError, match="ELRT: no layer of Sequential can be factorized"):  # 6 was its only one
        lr.ELRT(net, rank="flops:0.5", input_size=(1, 3, 8, 8))
    for build in (lambda m: lr.TRP(m, period=1, energy=0.5, input_size=(1, 3, 8, 8)),
                  lambda m: lr.LRPET(m, goal=0.5, period=1, input_size=(1, 3, 8, 8))):
        model = _foreign_net()
        model[6].requires_grad_(False)
        frozen = model[6].weight.detach().clone()
        method = build(model)
        assert "6" not in method.ranks() and isinstance(model[6], nn.Conv2d)
        method.setup(steps_per_epoch=1, total_steps=2)
        torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 8, 8)), torch.tensor([0, 1])).backward()
        method.before_step()
        method.after_step()
        assert torch.equal(model[6].weight, frozen) and model[6].weight.grad is None


def test_trps_official_preset_leaves_out_the_first_conv_the_input_meets():
    class HeadFirst(nn.Module):  # registers its head before its stem
        def __init__(self):
            super().__init__()
            self.head = nn.Conv2d(16, 16, 3, padding=1)
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.body = nn.Conv2d(16, 16, 3, padding=1)

        def forward(self, x):
            return self.head(self.body(self.stem(x))).mean((2, 3))

    method = lr.TRP(HeadFirst(), eligible="official", input_size=(1, 3, 8, 8))
    assert sorted(method.layers) == ["body", "head"]


def test_a_plan_prints_as_a_per_layer_table():
    decisions = lr.plan(lr.models.create("resnet20"), rank="energy:0.9")
    lines = str(decisions).splitlines()
    assert lines[0].split() == ["layer", "shape", "MACs", "rank/max", "MACs", "after", "note"]
    assert len(lines) == len(decisions) + 1 and all(d.name in line for d, line in zip(decisions, lines[1:]))
    assert isinstance(decisions, list) and decisions[0].name == "conv1"  # still the list of decisions
