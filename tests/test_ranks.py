import pytest
import torch

from lrtrain.ranks import Energy, FixedRank, FlopsBudget, Ratio, RankRequest, Threshold, parse_policy


def _req(name, S, unit, dense):
    S = torch.as_tensor(S, dtype=torch.float64)
    return RankRequest(name, len(S), cost=lambda r: r * unit, dense_cost=dense, spectrum=S)


def test_per_layer_policies():
    reqs = [_req("a", [4.0, 2.0, 1.0, 1.0], 10, 100), _req("b", [1.0] * 8, 10, 100)]
    assert Energy(0.9)(reqs) == {"a": 2, "b": 8}
    assert Threshold(1.5)(reqs) == {"a": 2, "b": 1}
    assert Ratio(0.5)(reqs) == {"a": 2, "b": 4}
    assert FixedRank(6)(reqs) == {"a": 4, "b": 6}


def test_tucker2_ranks_per_mode():
    req = RankRequest("t", (8, 16), cost=lambda r: r[0] * r[1], dense_cost=10**6)
    assert Ratio(0.5)([req]) == {"t": (4, 8)}
    req.spectrum = (torch.tensor([3.0, 1.0, 0.1]), torch.tensor([1.0, 1.0, 1.0, 1.0]))
    assert Energy(0.85)([req]) == {"t": (1, 4)}
    assert Energy(0.9)([req]) == {"t": (2, 4)}


def test_flops_budget_meets_budget_and_spends_on_large_singular_values():
    # layer "a" has a flat spectrum, "b" one dominant direction: at equal cost the budget goes to "a"
    reqs = [_req("a", [1.0] * 10, 10, 1000), _req("b", [10.0] + [0.01] * 9, 10, 1000)]
    ranks = FlopsBudget(0.05)(reqs, fixed_cost=0)
    cost = sum(ranks[r.name] * 10 for r in reqs)
    assert cost <= 0.05 * 2000
    assert ranks["b"] == 1 and ranks["a"] > 10 // 2
    # fixed (non-factorized) layers count in the budget
    ranks2 = FlopsBudget(0.5)(reqs, fixed_cost=500)
    assert sum(ranks2[r.name] * 10 for r in reqs) + 500 <= 0.5 * 2500


def test_flops_budget_never_goes_past_break_even():
    reqs = [_req("a", [1.0] * 10, 40, 200)]  # rank 5 costs as much as dense
    assert FlopsBudget(1.0)(reqs)["a"] == 4


def test_flops_budget_without_spectra_uses_common_ratio():
    reqs = [RankRequest(n, 64, cost=lambda r: r * 100, dense_cost=64 * 100 * 2) for n in "abc"]
    ranks = FlopsBudget(0.25)(reqs)
    assert len(set(ranks.values())) == 1
    assert sum(r * 100 for r in ranks.values()) <= 0.25 * 3 * 12800


def test_unreachable_budget_is_an_error():
    with pytest.raises(ValueError, match="unreachable"):
        FlopsBudget(0.01)([_req("a", [1.0, 1.0], 10, 20)], fixed_cost=100)


def test_parse_policy():
    assert isinstance(parse_policy("energy:0.95"), Energy)
    assert parse_policy("fixed:8").rank == 8
    assert parse_policy({"flops": 0.45}).fraction == 0.45
    assert parse_policy(4).rank == 4
    with pytest.raises(ValueError, match="did you mean 'energy'"):
        parse_policy("enrgy:0.9")
    with pytest.raises(ValueError, match="not a number"):
        parse_policy("ratio:abc")
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        parse_policy("energy:1.5")
    with pytest.raises(ValueError, match="positive integer"):
        FixedRank(0)
