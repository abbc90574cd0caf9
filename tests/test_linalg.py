import math

import pytest
import torch

from lrtrain import linalg


def _low_rank(m, n, r, batch=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, m, r, generator=g, dtype=torch.float64) @ torch.randn(*batch, r, n, generator=g,
                                                                                      dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # LAPACK's SVD; the float64 Gram's eigenvalues
def test_singular_values_many_match_per_matrix_svd_and_keep_order(dtype):
    g = torch.Generator().manual_seed(0)
    mats = [torch.randn(s, generator=g, dtype=dtype) for s in [(4, 6), (5, 3), (4, 6), (5, 3), (7, 7)]]
    mats.append(_graded(6, 9, 0))  # exact zeros among them
    for m, S in zip(mats, linalg.singular_values_many(mats), strict=True):
        assert S.dtype == m.dtype
        torch.testing.assert_close(S.double(), torch.linalg.svdvals(m.double()), atol=1e-6, rtol=0)


def test_energy_rank_is_smallest_rank_keeping_the_fraction():
    S = torch.tensor([[4.0, 2.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    # energies 16, 4, 1, 1 of 22: 16/22 = 0.727, 20/22 = 0.909, 21/22 = 0.955
    assert linalg.energy_rank(S[0], 0.7).item() == 1
    assert linalg.energy_rank(S[0], 0.9).item() == 2
    assert linalg.energy_rank(S[0], 0.95).item() == 3
    assert linalg.energy_rank(S, 0.5).tolist() == [1, 2]
    assert linalg.energy_rank(S, 1.0).tolist() == [4, 4]
    with pytest.raises(ValueError, match="energy"):
        linalg.energy_rank(S, 1.5)


def test_project_reaches_eckart_young_and_is_idempotent():
    a = torch.randn(3, 8, 5, dtype=torch.float64)
    p = linalg.project(a, 2)
    S = torch.linalg.svdvals(a)
    err = (a - p).square().sum((-2, -1))
    torch.testing.assert_close(err, S[:, 2:].square().sum(-1))
    assert (torch.linalg.matrix_rank(p) == 2).all()
    torch.testing.assert_close(linalg.project(p, 2), p)


def test_project_with_one_rank_per_matrix():
    a = torch.randn(2, 6, 6, dtype=torch.float64)
    p = linalg.project(a, torch.tensor([1, 4]))
    assert torch.linalg.matrix_rank(p).tolist() == [1, 4]


def test_transfer_energy_preserves_total_energy():
    S = torch.tensor([[5.0, 3.0, 2.0, 1.0, 0.5]], dtype=torch.float64)
    for rho in (0.0, 0.3):
        out = linalg.transfer_energy(S, 2, rho)
        torch.testing.assert_close(out.square().sum(), S.square().sum())
        torch.testing.assert_close(out[0, 2:], rho * S[0, 2:])
        # uniform transfer: the kept values are scaled by one common factor
        ratio = out[0, :2] / S[0, :2]
        torch.testing.assert_close(ratio[0], ratio[1])


def test_numerical_rank():
    a = _low_rank(10, 8, 3)
    assert linalg.numerical_rank(torch.linalg.svdvals(a)).item() == 3


def test_polar_exact_and_newton_schulz_agree():
    g = torch.Generator().manual_seed(1)
    # a well-conditioned batch, as trained conv weights are
    q1, _ = torch.linalg.qr(torch.randn(4, 16, 16, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(4, 36, 16, generator=g, dtype=torch.float64))
    s = torch.linspace(1.0, 0.2, 16, dtype=torch.float64)
    a = (q1 * s) @ q2.mT  # (4, 16, 36), singular values 1 .. 0.2
    exact = linalg.polar(a)
    torch.testing.assert_close(exact @ exact.mT, torch.eye(16, dtype=torch.float64).expand(4, 16, 16))
    approx = linalg.polar_newton_schulz(a, steps=20)
    assert (approx - exact).norm() / exact.norm() < 1e-6
    tall = linalg.polar_newton_schulz(a.mT, steps=20)
    torch.testing.assert_close(tall, exact.mT, atol=1e-6, rtol=0)


def test_svd_falls_back_on_low_precision_and_rejects_nan():
    a = torch.randn(6, 4).bfloat16()
    dec = linalg.svd(a)
    assert dec.S.dtype == torch.float32
    bad = torch.full((3, 3), float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        linalg.svd(bad)


def test_newton_schulz_warmup_reaches_the_polar_factor_of_ill_conditioned_matrices():
    g = torch.Generator().manual_seed(2)
    q1, _ = torch.linalg.qr(torch.randn(3, 48, 48, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(3, 48, 48, generator=g, dtype=torch.float64))
    a = (q1 * torch.logspace(0, -5, 48, dtype=torch.float64)) @ q2.mT  # σ from 1 down to 1e-5
    exact = linalg.polar(a)
    cubic = linalg.polar_newton_schulz(a, steps=16)
    fast = linalg.polar_newton_schulz(a, steps=6, warmup=10)
    assert (cubic - exact).norm() / exact.norm() > 0.05  # the cubic alone lifts σ = 1e-5 too slowly
    assert (fast - exact).norm() / exact.norm() < 1e-9


def _flaky_svd(monkeypatch, failures):
    """Make torch.linalg.svd fail (raise, or return NaN) on its first calls, as on an ill-conditioned weight,
    after the CPU's Gram path (its eigh) failed too."""
    real, calls = torch.linalg.svd, []

    def eigh(a, **kw):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", eigh)

    def svd(a, **kw):
        calls.append(a.dtype)
        how = failures[len(calls) - 1] if len(calls) <= len(failures) else None
        if how == "raise":
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge because the input "
                                           "matrix is ill-conditioned or has too many repeated singular values")
        U, S, Vh = real(a, **kw)
        return (U, S * float("nan"), Vh) if how == "nan" else (U, S, Vh)

    monkeypatch.setattr(torch.linalg, "svd", svd)
    return calls


@pytest.mark.parametrize("failures, dtypes", [
    ([], [torch.float32]),  # the Gram path failed: LAPACK's float32 SVD
    (["raise"], [torch.float32, torch.float64]),
    (["nan"], [torch.float32, torch.float64]),
    (["raise", "nan"], [torch.float32, torch.float64, torch.float64]),  # then a jittered float64 matrix
])
def test_svd_falls_back_instead_of_crashing(monkeypatch, failures, dtypes):
    a = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(0))
    calls = _flaky_svd(monkeypatch, failures)
    dec = linalg.svd(a)
    assert calls == dtypes
    assert dec.S.dtype == torch.float32 and bool(torch.isfinite(dec.S).all())
    torch.testing.assert_close(linalg.reconstruct(*dec), a, atol=1e-5, rtol=1e-5)


def _graded(m, n, low, batch=()):
    """float32 matrices whose σ fall evenly on a log scale from 1 to `low` (0: the last half exactly zero)."""
    g = torch.Generator().manual_seed(0)
    k = min(m, n)
    q1, _ = torch.linalg.qr(torch.randn(*batch, m, k, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(*batch, n, k, generator=g, dtype=torch.float64))
    if low:
        sigma = torch.logspace(0, math.log10(low), k, dtype=torch.float64)
    else:
        sigma = torch.ones(k, dtype=torch.float64)
        sigma[k // 2:] = 0
    return ((q1 * sigma) @ q2.mT).float()


@pytest.mark.parametrize("shape, low", [((3, 16, 144), 1e-2), ((200, 30), 1e-3), ((48, 48), 1e-1),
                                        ((32, 96), 1e-8), ((96, 32), 1e-8), ((20, 60), 0), ((60, 20), 0),
                                        ((8, 8), None)])
def test_a_cpu_float32_svd_comes_from_the_gram_matrix_as_accurate_as_lapacks(monkeypatch, shape, low):
    a = torch.randn(shape, generator=torch.Generator().manual_seed(0)) if low is None else _graded(*shape[-2:], low, shape[:-2])
    exact = torch.linalg.svd(a.double(), full_matrices=False)
    lapack = torch.linalg.svd(a, full_matrices=False)
    monkeypatch.setattr(torch.linalg, "svd", None)  # never called
    U, S, Vh = linalg.svd(a)
    assert U.dtype == S.dtype == Vh.dtype == torch.float32
    k = min(shape[-2:])
    assert U.shape[-2:] == (shape[-2], k) and Vh.shape[-2:] == (k, shape[-1])
    scale = exact.S[..., :1].max().item()
    assert (S.double() - exact.S).abs().max() <= max(2 * (lapack.S.double() - exact.S).abs().max(), 1e-7 * scale)
    torch.testing.assert_close(linalg.reconstruct(U, S, Vh), a, atol=2e-6 * a.abs().max().item(), rtol=0)
    eye = torch.eye(k).expand(*shape[:-2], k, k)
    # every vector orthonormal, those of tiny or zero σ too (graded down to 1e-8, half zero), as LAPACK's
    torch.testing.assert_close(U.mT @ U, eye, atol=2e-6, rtol=0)
    torch.testing.assert_close(Vh @ Vh.mT, eye, atol=2e-6, rtol=0)


def test_an_svd_cut_at_a_rank_is_the_truncation_and_needs_no_qr_for_a_projected_weight(monkeypatch):
    a = _graded(24, 72, 0, (2,))  # half the σ exactly zero: a weight projected to rank 12
    whole = linalg.svd(a)
    monkeypatch.setattr(torch.linalg, "qr", None)  # the kept σ are all good: division only
    cut = linalg.svd(a, rank=12)
    assert cut.U.shape == (2, 24, 12) and cut.S.shape == (2, 12) and cut.Vh.shape == (2, 12, 72)
    for mine, theirs in zip(cut, linalg.truncate(whole, 12)):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=0)
    torch.testing.assert_close(linalg.reconstruct(*cut), a, atol=1e-6, rtol=0)


def test_svd_gives_up_with_a_clear_error_when_every_fallback_fails(monkeypatch):
    _flaky_svd(monkeypatch, ["raise"] * 3)
    with pytest.raises(RuntimeError, match=r"SVD of a \(6, 4\) weight failed even in float64 with jitter"):
        linalg.svd(torch.randn(6, 4))


def test_svd_of_non_finite_weights_names_the_layers():
    a = torch.randn(3, 5, 4)
    a[1, 2, 0] = float("inf")
    with pytest.raises(linalg.NonFiniteError, match=r"^b: the weight contains NaN or Inf values"):
        linalg.svd(a, names=["a", "b", "c"])
    mats = [torch.randn(5, 4), torch.full((3, 3), float("nan")), torch.randn(5, 4)]
    with pytest.raises(linalg.NonFiniteError, match=r"^second: the weight contains NaN"):
        linalg.singular_values_many(mats, ["first", "second", "third"])


def test_full_precision_sets_ieee_matmuls_inside_and_restores_the_callers_choice():
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        with pytest.raises(RuntimeError):
            with linalg.full_precision():
                assert torch.get_float32_matmul_precision() == "highest"
                with linalg.full_precision():
                    pass
                assert torch.get_float32_matmul_precision() == "highest"
                raise RuntimeError("restored even so")
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(saved)


def test_full_precision_also_works_when_the_caller_set_tf32_per_backend():
    matmul = torch.backends.cuda.matmul
    saved_legacy, saved = torch.get_float32_matmul_precision(), matmul.fp32_precision
    try:
        matmul.fp32_precision = "tf32"  # torch's newer API: the legacy getter raises from now on
        with linalg.full_precision():
            assert matmul.fp32_precision == "ieee" and torch.backends.mkldnn.matmul.fp32_precision == "ieee"
            linalg.gram_eigh(torch.randn(2, 3, 5))
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = saved
        torch.set_float32_matmul_precision(saved_legacy)


def test_the_methods_linear_algebra_runs_without_tf32_when_training_allows_it(monkeypatch):
    from lrtrain import LRPET, TRP, models

    seen = []
    reconstruct, apply = linalg.reconstruct, linalg.GramEigh.apply
    precision = torch.get_float32_matmul_precision
    monkeypatch.setattr(linalg, "reconstruct", lambda *a: seen.append(("LRPET", precision())) or reconstruct(*a))
    # TRP's float32 products: the truncation and U_r V_rᵀ from the Gram eigendecomposition
    monkeypatch.setattr(linalg.GramEigh, "apply", lambda *a: seen.append(("TRP", precision())) or apply(*a))
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # what the trainer sets on a GPU
        LRPET(models.create("resnet20"), goal=0.5, period=1).project()
        TRP(models.create("resnet20"), period=1).project()
        assert set(seen) == {("LRPET", "highest"), ("TRP", "highest")}
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(saved)


@pytest.mark.parametrize("shape", [(3, 16, 144), (2, 96, 48), (4, 8, 16, 9), (5, 5)])
@pytest.mark.parametrize("host", [True, False])
def test_gram_eigh_gives_the_svds_spectrum_truncation_and_polar_factor(shape, host):
    a = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    dec = linalg.gram_eigh(a, host=host)
    assert dec.S.device.type == "cpu" and dec.S.dtype == torch.float64 and dec.basis.dtype == a.dtype
    U, S, Vh = torch.linalg.svd(a.double(), full_matrices=False)
    torch.testing.assert_close(dec.S, S, rtol=1e-6, atol=1e-6 * S.amax().item())
    rank = linalg.energy_rank(S, 0.8)
    assert torch.equal(linalg.energy_rank(dec.S, 0.8), rank)
    keep = linalg.rank_mask(S, rank)
    truncated = linalg.reconstruct(U, S * keep, Vh)
    torch.testing.assert_close(dec.apply(a, keep).double(), truncated, rtol=0, atol=2e-5 * truncated.abs().amax())
    polar = (U * keep.unsqueeze(-2)) @ Vh
    torch.testing.assert_close(dec.apply(a, keep / dec.S).double(), polar, rtol=0, atol=2e-5)
    new_values = linalg.transfer_energy(S, rank)
    torch.testing.assert_close(dec.apply(a, new_values / dec.S).double(), linalg.reconstruct(U, new_values, Vh),
                               rtol=0, atol=2e-5 * truncated.abs().amax())


def test_gram_eigh_of_a_rank_deficient_matrix_has_exact_zero_tail_and_no_nan():
    a = _low_rank(12, 40, 3).float()
    dec = linalg.gram_eigh(a)
    assert (dec.S[3:] < 1e-5 * dec.S[0]).all() and (dec.S[:3] > 0.1 * dec.S[0]).all()
    assert linalg.numerical_rank(dec.S, 1e-4).item() == 3
    keep = linalg.rank_mask(dec.S, 3)
    torch.testing.assert_close(dec.apply(a, keep), a, rtol=0, atol=2e-5 * a.abs().amax().item())
    zero = linalg.gram_eigh(torch.zeros(4, 6))
    assert torch.equal(zero.S, torch.zeros(4, dtype=torch.float64)) and torch.isfinite(zero.basis).all()


def test_gram_eigh_names_the_layer_holding_nan():
    mats = torch.randn(3, 4, 6)
    mats[1, 0, 0] = float("inf")
    with pytest.raises(linalg.NonFiniteError, match=r"^b: the weight contains NaN or Inf values"):
        linalg.gram_eigh(mats, names=["a", "b", "c"])


def test_gram_eigh_many_equals_one_call_per_group_and_names_the_bad_layer():
    g = torch.Generator().manual_seed(2)
    mats = [torch.randn(3, 16, 144, generator=g), torch.randn(2, 96, 48, generator=g), torch.randn(8, 16, 9, generator=g)]
    for dec, a in zip(linalg.gram_eigh_many(mats), mats, strict=True):
        one = linalg.gram_eigh(a)
        assert dec.left == one.left and torch.equal(dec.S, one.S) and torch.equal(dec.basis, one.basis)
    assert linalg.gram_eigh_many([]) == []
    mats[1][1, 0, 0] = float("nan")
    with pytest.raises(linalg.NonFiniteError, match=r"^y: the weight contains NaN"):
        linalg.gram_eigh_many(mats, [["a", "b", "c"], ["x", "y"], None])


def test_gram_transfer_decomposes_the_matrices_as_they_were_when_sent():
    g = torch.Generator().manual_seed(3)
    mats = [torch.randn(2, 16, 144, generator=g), torch.randn(3, 96, 48, generator=g)]
    expected = linalg.gram_eigh_many([m.clone() for m in mats])
    transfer = linalg.GramTransfer(mats)
    for m in mats:  # what a training step does to the weights before `receive`
        m.mul_(3).add_(torch.randn(m.shape, generator=g))
    for dec, ref in zip(transfer.receive(), expected, strict=True):
        assert dec.left == ref.left and torch.equal(dec.S, ref.S) and torch.equal(dec.basis, ref.basis)


def test_newton_schulz_of_many_shapes_in_one_padded_batch_is_each_ones():
    """Zero rows and columns stay zero under the odd polynomials: one padded batch gives each matrix's own
    polar factor (wide, tall, a 4-D stack of per-filter matrices)."""
    torch.manual_seed(0)
    mats = [torch.randn(6, 16, 144), torch.randn(3, 64, 32), torch.randn(2, 5, 7, 9), torch.randn(4, 9)]
    for a, got in zip(mats, linalg.polar_newton_schulz_many(mats, warmup=10, steps=6)):
        assert got.shape == a.shape
        torch.testing.assert_close(got, linalg.polar_newton_schulz(a, warmup=10, steps=6), atol=2e-6, rtol=0)
    with pytest.raises(ValueError, match="share a dtype and a device"):
        linalg.polar_newton_schulz_many([mats[0], mats[1].double()])
