import numpy as np
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


def test_flops_budget_never_goes_past_break_even_but_keeps_a_layer_whole_where_it_fits():
    reqs = [_req("a", [1.0] * 10, 40, 200)]  # rank 5 costs as much as dense
    assert FlopsBudget(0.9)(reqs)["a"] == 4  # 160 MACs: dense (200) does not fit
    assert FlopsBudget(1.0)(reqs)["a"] == 10  # the dense layer fits: all its energy, not rank 4 (it was)


def test_what_a_budget_leaves_past_break_even_keeps_the_layers_that_gain_most_energy_per_mac_whole():
    # both at break-even rank 4 cost 320; 110 MACs are left: one layer can go whole (+40)
    flat = _req("flat", [1.0] * 10, 40, 200)  # 60 % of its energy beyond rank 4
    steep = _req("steep", [8.0, 4.0, 2.0, 1.0] + [0.1] * 6, 40, 200)  # almost none beyond rank 4
    assert FlopsBudget(1.0)([flat, steep], fixed_cost=30) == {"flat": 10, "steep": 10}  # everything fits
    ranks = FlopsBudget(390 / 430)([flat, steep], fixed_cost=30)  # 360 for the two: one goes whole (+40)
    assert ranks == {"flat": 10, "steep": 4}
    assert FlopsBudget(389 / 430)([flat, steep], fixed_cost=30) == {"flat": 4, "steep": 4}  # 359: none


def test_a_ratio_whose_product_is_whole_keeps_that_rank_despite_floating_point():
    assert [Ratio(r).layer_rank(100, None) for r in (0.29, 0.57, 0.58, 0.5)] == [29, 57, 58, 50]
    assert Ratio(0.295).layer_rank(100, None) == 29  # a fraction is still cut


def test_a_model_at_the_whole_budget_is_left_dense():
    import lrtrain as lr

    model = lr.models.create("resnet20")
    assert not any(d.factorize for d in lr.plan(model, "flops:1.0"))
    dense = lr.count(model).flops
    spent = sum(d.flops for d in lr.plan(model, "flops:0.9,multiple:8"))
    assert 0.85 * dense < spent <= 0.9 * dense  # 0.78 before: break-even ranks and nothing whole


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
    # YAML gives whole numbers as floats, numpy as its own ints: the same policies
    assert parse_policy({"flops": 0.45, "multiple": 8.0}).multiple == 8 and parse_policy("fixed:8.0").rank == 8
    assert parse_policy(np.int64(8)).rank == 8
    for text in ("threshold:inf", "energy:nan", "fixed:1_0", "flops:\u0661", "flops:0.5,multiple:1e"):
        with pytest.raises(ValueError, match="is not"):  # numbers Python reads but no rank policy means
            parse_policy(text)


def test_per_layer_policies_round_up_to_the_multiple_capped_at_the_maximum():
    reqs = [_req("a", [4.0, 2.0, 1.0, 1.0], 10, 100), _req("b", [1.0] * 8, 10, 100)]
    assert Energy(0.5, multiple=4)(reqs) == {"a": 4, "b": 4}   # 1 and 4 singular values, rounded up
    assert Threshold(1.5, multiple=3)(reqs) == {"a": 3, "b": 3}
    assert Ratio(0.5, multiple=3)(reqs) == {"a": 3, "b": 6}
    assert FixedRank(5, multiple=4)(reqs) == {"a": 4, "b": 8}
    req = RankRequest("t", (8, 16), cost=lambda r: r[0] * r[1], dense_cost=10**6)
    assert Ratio(0.3, multiple=8)([req]) == {"t": (8, 8)}


def _assert_maximal(policy, reqs, ranks, budget):
    """Within budget, on the policy's steps, and no layer could take its next step of rank, nor go whole
    (dense), within it (every spectrum here has energy in its tail)."""
    cost = {r.name: min(r.cost(ranks[r.name]), r.dense_cost) for r in reqs}  # a whole layer costs dense
    spent = sum(cost.values())
    assert spent <= budget
    for r in reqs:
        k = ranks[r.name]
        assert k % policy.multiple == 0 or k == r.max_rank
        nxt = min(k + policy.multiple, r.max_rank)
        if nxt > k and r.cost(nxt) < r.dense_cost:
            assert spent + r.cost(nxt) - r.cost(k) > budget, (r.name, k)
        if k < r.max_rank:
            assert spent + r.dense_cost - cost[r.name] > budget, (r.name, "could go whole")


@pytest.mark.parametrize("multiple", [1, 4, 8])
def test_flops_budget_spends_in_steps_of_the_multiple_and_fills_its_budget(multiple):
    gen = torch.Generator().manual_seed(0)
    reqs = []
    for i, (n, unit) in enumerate([(16, 3), (32, 5), (64, 9), (64, 9), (30, 4)]):
        S = torch.rand(n, generator=gen, dtype=torch.float64).sort(descending=True).values
        reqs.append(_req(f"l{i}", S * (i + 1), unit, unit * n * 2 // 3))
    dense = sum(r.dense_cost for r in reqs)
    for fraction in (0.4, 0.6, 0.9):
        policy = FlopsBudget(fraction, multiple=multiple)
        ranks = policy(reqs, fixed_cost=100)
        _assert_maximal(policy, reqs, ranks, fraction * (dense + 100) - 100)


def test_flops_budget_multiple_without_spectra_keeps_one_common_aligned_ratio():
    reqs = [RankRequest(n, m, cost=lambda r: r * 100, dense_cost=m * 100 * 2) for n, m in zip("abc", (16, 32, 64))]
    ranks = FlopsBudget(0.3, multiple=8)(reqs)
    assert all(r % 8 == 0 for r in ranks.values())
    assert sum(r * 100 for r in ranks.values()) <= 0.3 * sum(r.dense_cost for r in reqs)
    # tied tucker2 pairs: both modes aligned
    pair = RankRequest("t", (16, 32), cost=lambda r: (r[0] + r[1]) * 50, dense_cost=10**5)
    assert all(r % 8 == 0 for r in FlopsBudget(0.05, multiple=8)([pair])["t"])


def test_an_unreachable_multiple_names_itself():
    reqs = [_req("a", [1.0] * 16, 10, 200)]  # rank 8 costs 80 of 200
    assert FlopsBudget(0.4, multiple=4)(reqs)["a"] == 8
    with pytest.raises(ValueError, match=r"unreachable.*rank 16 \(its multiple\).*lower the multiple"):
        FlopsBudget(0.4, multiple=16)(reqs)
    # a layer whose lowest rank is not cheaper than dense stays dense: it costs its dense MACs, no more
    reqs.append(_req("b", [1.0] * 4, 60, 200))  # rank 4 would cost 240
    assert FlopsBudget(0.8, multiple=4)(reqs) == {"a": 12, "b": 4}  # 120 + 200 of 320


def test_parse_policy_multiple_option_and_its_errors():
    p = parse_policy("flops:0.45,multiple:8")
    assert isinstance(p, FlopsBudget) and (p.fraction, p.multiple) == (0.45, 8)
    assert repr(p) == "FlopsBudget(0.45, multiple=8)" and repr(FlopsBudget(0.45)) == "FlopsBudget(0.45)"
    assert parse_policy({"energy": 0.9, "multiple": 16}).multiple == 16
    assert parse_policy("ratio:0.5, multiple:4").multiple == 4
    with pytest.raises(ValueError, match="unknown option 'multple:8'"):
        parse_policy("flops:0.45,multple:8")
    with pytest.raises(ValueError, match="multiple is given twice"):
        parse_policy("flops:0.45,multiple:8,multiple:16")
    with pytest.raises(ValueError, match="'8.5' is not an integer"):
        parse_policy("fixed:8.5")
    with pytest.raises(ValueError, match="multiple 'x' is not an integer"):
        parse_policy("flops:0.45,multiple:x")
    for bad in (0, -8, 2.5, True, "8"):
        with pytest.raises(ValueError, match="multiple must be a positive integer"):
            FlopsBudget(0.5, multiple=bad)


def test_a_layer_not_cheaper_at_its_aligned_lowest_rank_stays_whole():
    # max rank 9 with multiple 8: rank 8 costs 80 of a dense 60; TRP would otherwise cut it every projection
    reqs = [_req("a", [1.0] * 9, 10, 60), _req("b", [1.0] * 32, 10, 600)]
    ranks = FlopsBudget(0.6, multiple=8)(reqs)
    assert ranks["a"] == 9 and ranks["b"] % 8 == 0
    spectra_free = [RankRequest(r.name, r.max_rank, r.cost, r.dense_cost) for r in reqs]  # common ratio path
    assert FlopsBudget(0.6, multiple=8)(spectra_free)["a"] == 9


def test_a_policy_mapping_in_any_order_and_numpy_multiples():
    import numpy as np

    assert parse_policy({"multiple": 8, "flops": 0.45}).multiple == 8
    assert FlopsBudget(0.5, multiple=np.int64(8)).multiple == 8 and FlopsBudget(0.5, multiple=8.0).multiple == 8


@pytest.mark.parametrize("policy,value", [(Energy, "a"), (Threshold, float("nan")), (Ratio, None),
                                          (FlopsBudget, float("nan")), (FixedRank, "3"), (FixedRank, 2.5)])
def test_a_policy_value_that_is_not_a_number_names_the_policy(policy, value):
    with pytest.raises(ValueError, match=rf"^{policy.__name__}: .*{value!r}"):
        policy(value)
    assert FixedRank(4.0).rank == 4  # a whole float is a rank, as everywhere else
