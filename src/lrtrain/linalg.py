"""Linear algebra on many weight matrices at once.

Every method in lrtrain works on a list of weight matrices (one per layer, in the layer's scheme form).
Layers of a CNN come in few distinct shapes (a CIFAR ResNet-56 has 55 convs but 5 shapes), so the
functions here group matrices by shape and run one batched SVD per group instead of a Python loop over
layers. All functions accept a batch dimension: a "matrix" here is a tensor of shape (..., m, n).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any, Iterator, NamedTuple

import torch
from torch import Tensor


class SVD(NamedTuple):
    """Thin SVD: ``A = U @ diag(S) @ Vh`` with U (..., m, k), S (..., k), Vh (..., k, n), k = min(m, n)."""

    U: Tensor
    S: Tensor
    Vh: Tensor


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """float32 matrix products in full (IEEE) precision inside, whatever the caller chose.

    Training on a GPU allows TF32 matrix products (``torch.set_float32_matmul_precision("high")``), and a
    loop may call a method's hooks inside ``torch.autocast`` (bf16 products); either's round-off (~1e-3
    relative) would put a projected weight's zeroed singular values back at ~1e-3·σ₁: numerical ranks,
    Newton–Schulz polar factors and every reconstruction would then be wrong. Inside, autocast is off and
    float32 products are IEEE. The methods' hooks and `surgery.factorize` run under this (as a context or
    a decorator).
    """
    with contextlib.ExitStack() as stack:
        for device in ("cpu", "cuda"):
            if torch.is_autocast_enabled(device):
                stack.enter_context(torch.autocast(device, enabled=False))
        stack.enter_context(_ieee_matmul())
        yield


@contextlib.contextmanager
def _ieee_matmul() -> Iterator[None]:
    try:
        saved = torch.get_float32_matmul_precision()
    except RuntimeError:  # the caller chose per backend (torch.backends.cuda.matmul.fp32_precision = ...)
        saved = None
    if saved is not None:
        torch.set_float32_matmul_precision("highest")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(saved)
        return
    backends = [torch.backends.cuda.matmul, torch.backends.mkldnn.matmul]
    values = [b.fp32_precision for b in backends]
    for b in backends:
        b.fp32_precision = "ieee"
    try:
        yield
    finally:
        for b, value in zip(backends, values):
            b.fp32_precision = value


class NonFiniteError(ValueError):
    """A weight holds NaN or Inf values, so it has no decomposition (training diverged)."""


def _nonfinite_message(a: Tensor, names: list[str] | None) -> str:
    if names is not None and a.dim() >= 3 and len(names) == a.shape[0]:
        bad = [n for n, m in zip(names, a) if not bool(torch.isfinite(m).all())]
        if bad:
            return f"{', '.join(bad)}: the weight contains NaN or Inf values, so it has no SVD"
    return f"SVD of a {tuple(a.shape)} weight failed: it contains NaN or Inf values"


def svd(a: Tensor, names: list[str] | None = None, rank: int | None = None) -> SVD:
    """Thin SVD of a (batch of) matrices, computed in float32 at least, with fallbacks; with ``rank``, its
    truncation to the leading `rank` singular triplets (`truncate`), which the CPU path computes alone.

    Low-precision inputs are promoted (LAPACK/cuSOLVER have no bf16 path). A float32 matrix on the CPU
    is decomposed through its float64 Gram matrix first (`_svd_from_gram`: 2-10x faster than LAPACK's SVD
    for a CNN's weight forms, and as accurate as a float32 SVD). If the decomposition fails to converge or
    returns non-finite values (ill-conditioned or degenerate weights), LAPACK's float32 SVD is tried (where
    that was not the first), then float64, then a slightly jittered matrix, before giving up with a clear
    error. A matrix holding NaN or Inf raises `NonFiniteError`, naming the
    layers when ``names`` (one per matrix of the batch, i.e. per index of the first dimension) is given.
    """
    work = a if a.dtype in (torch.float32, torch.float64) else a.float()
    attempts = [lambda: _lapack(work), lambda: _lapack(work.double()), lambda: _lapack(_jittered(work.double()))]
    if work.device.type == "cpu" and work.dtype == torch.float32 and work.numel():  # float64 keeps LAPACK's accuracy
        attempts.insert(0, lambda: _svd_from_gram(work, rank))
    last_error: Exception | None = None
    for attempt in attempts:
        try:
            U, S, Vh = attempt()
        except RuntimeError as err:  # torch raises LinAlgError (a RuntimeError) on non-convergence
            last_error = err
            continue
        if bool(torch.isfinite(S).all()):
            dec = SVD(U.to(work.dtype), S.to(work.dtype), Vh.to(work.dtype))
            return dec if rank is None else truncate(dec, rank)
        if not bool(torch.isfinite(a).all()):
            break  # no retry can help
    if not bool(torch.isfinite(a).all()):
        raise NonFiniteError(_nonfinite_message(a, names))
    raise RuntimeError(f"SVD of a {tuple(a.shape)} weight failed even in float64 with jitter: {last_error}")


def _lapack(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return torch.linalg.svd(a, full_matrices=False)


def _jittered(a: Tensor) -> Tensor:
    return a + 1e-7 * a.abs().amax().clamp_min(1e-12) * torch.randn_like(a)


def _svd_from_gram(a: Tensor, rank: int | None = None) -> SVD:
    """Thin SVD of finite `a` from ``eigh`` of its smaller float64 Gram matrix: U (or V) is its eigenbasis,
    σ the roots of its eigenvalues (absolute error ~1e-16·σ₁²/σ: below float32's ~1e-7·σ₁ for every σ above
    1e-9·σ₁). The other side comes from A's product with that basis, whose column i is σᵢ times its i-th
    vector: divided by σᵢ where every σ is above 1e-5·σ₁ (orthonormal to ~1e-16·(σ₁/σᵢ)², float32's own
    round-off there), else orthonormalized by QR, which also completes the basis where σ is too small for
    its vector to mean anything, as LAPACK's SVD would (a projected, rank-deficient weight).
    With ``rank``, only the leading `rank` triplets, so only their σ need be above 1e-5·σ₁ (a projected
    weight cut at its rank: no QR).
    (Measured on one CPU thread, float32 512×4608: 0.09 s by division against LAPACK's 0.95 s.)
    """
    left = a.shape[-2] <= a.shape[-1]
    a64 = a.double()
    S, basis = _eigh_descending(_gram(a64))
    S, basis = S[..., :rank], basis[..., :rank]
    scaled = a64.mT @ basis if left else a64 @ basis
    if bool((S[..., -1] > 1e-5 * S[..., 0]).all()):
        other = scaled / S.unsqueeze(-2)
    else:
        Q, R = torch.linalg.qr(scaled)
        other = Q * torch.where(R.diagonal(dim1=-2, dim2=-1) < 0, -1.0, 1.0).unsqueeze(-2)  # σᵢ ≥ 0
    U, V = (basis, other) if left else (other, basis)
    return SVD(U, S, V.mT)


def _gram(a: Tensor) -> Tensor:
    """The smaller Gram matrix of (a batch of) `a`: ``A·Aᵀ`` where A is wide (m ≤ n), else ``Aᵀ·A``."""
    return a @ a.mT if a.shape[-2] <= a.shape[-1] else a.mT @ a


def _eigh_descending(gram: Tensor) -> tuple[Tensor, Tensor]:
    """(σ, eigenvectors) of a float64 Gram matrix A·Aᵀ, σ = √λ decreasing; LAPACK on one thread for k ≤ 256."""
    with _lapack_threads(gram):
        eigenvalues, vectors = torch.linalg.eigh(gram)
    return eigenvalues.flip(-1).clamp_min(0).sqrt(), vectors.flip(-1)


def singular_values(a: Tensor, names: list[str] | None = None) -> Tensor:
    """The singular values of a (batch of) matrices, decreasing, in float32 at least: on the CPU those of a
    finite float32 matrix are the roots of its float64 Gram matrix's eigenvalues (no vectors computed),
    else `svd`'s (with its fallbacks and its error naming ``names`` for a matrix holding NaN or Inf)."""
    if a.device.type == "cpu" and a.dtype in (torch.float32, torch.bfloat16, torch.float16) and a.numel() \
            and bool(torch.isfinite(a).all()):
        gram = _gram(a.double())
        with _lapack_threads(gram):
            return torch.linalg.eigvalsh(gram).flip(-1).clamp_min(0).sqrt().float()
    return svd(a, names).S


def singular_values_many(mats: list[Tensor], names: list[str] | None = None) -> list[Tensor]:
    """`singular_values` of every matrix in `mats`, one batched call per group of equal shape, dtype and
    device, in the order of `mats`. ``names`` (one per matrix) name the layers in the error raised for a
    matrix holding NaN or Inf."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, m in enumerate(mats):
        groups[(tuple(m.shape), m.dtype, m.device)].append(i)
    out: list[Tensor | None] = [None] * len(mats)
    for idx in groups.values():
        S = singular_values(torch.stack([mats[i] for i in idx]), None if names is None else [names[i] for i in idx])
        for j, i in enumerate(idx):
            out[i] = S[j]
    return out  # type: ignore[return-value]


class GramEigh(NamedTuple):
    """``A = U diag(S) Vᵀ`` known through its smaller Gram matrix.

    ``basis`` is U (``left``: A is wide, m ≤ n) or V (A is tall), (..., k, k) with k = min(m, n), on A's
    device in A's dtype, float32 at least (`working_dtype`); ``S`` (..., k), decreasing, is float64 on the
    host, where rank rules read it without a device sync. `apply` and `factors` compute in the basis's
    dtype: a half-precision A is rounded once, in their result, and a 1/σ scale of a small σ does not
    overflow float16.
    """

    basis: Tensor
    S: Tensor
    left: bool

    def apply(self, a: Tensor, scale: Tensor) -> Tensor:
        """``U diag(scale) Uᵀ A`` (left) or ``A V diag(scale) Vᵀ``: a mask of kept directions gives A's
        truncation, ``mask / S`` the polar factor ``U_r V_rᵀ``, ``S' / S`` the matrix with singular values S'."""
        s, work = _to(scale.to(self.basis.dtype), a.device), a.to(self.basis.dtype)
        if self.left:
            return ((self.basis * s.unsqueeze(-2)) @ (self.basis.mT @ work)).to(a.dtype)
        return (((work @ self.basis) * s.unsqueeze(-2)) @ self.basis.mT).to(a.dtype)

    def factors(self, a: Tensor, scale: Tensor, width: int) -> tuple[Tensor, Tensor]:
        """``apply(a, scale)`` as two thin factors ``(L, R)``, ``L @ R``, of inner size `width`, for a
        `scale` that is zero past its first `width` entries (a rank-`width` result kept small), in the
        basis's dtype."""
        s, work = _to(scale[..., :width].to(self.basis.dtype), a.device), a.to(self.basis.dtype)
        basis = self.basis[..., :width]
        if self.left:
            return basis * s.unsqueeze(-2), basis.mT @ work
        # a copy, not a view of the basis (of the buffer of every group's bases, which a checkpoint would
        # save whole), laid out as a resumed run's stacked copy is, so that both multiply alike
        return (work @ basis) * s.unsqueeze(-2), basis.mT.contiguous()


def _lapack_threads(gram: Tensor) -> contextlib.AbstractContextManager:
    """One thread for a CPU eigendecomposition of k ≤ 256 (`_one_thread`); ImageNet widths keep torch's."""
    return _one_thread() if gram.device.type == "cpu" and gram.shape[-1] <= 256 else contextlib.nullcontext()


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    # LAPACK on matrices this small runs best on one thread; several spin and, beside a busy training
    # process, stall for seconds (measured: 192×192 batches 170x slower on 2 shared threads).
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def gram_eigh(a: Tensor, names: list[str] | None = None, host: bool = True) -> GramEigh:
    """Singular values and the smaller-side singular vectors of a (batch of) matrices, from the
    eigendecomposition of the float64 Gram matrix (``A·Aᵀ`` or ``Aᵀ·A``); `gram_eigh_many` does several at once.

    Cheaper than an SVD of a CNN's weight forms, whose smaller side is short (CIFAR: k ≤ 192, often 9×
    shorter than the other): one small product on the device, then, with ``host`` (the default), a copy of
    the k×k Gram matrices to the host and a LAPACK ``syevd`` there (on one thread for k ≤ 256), so the
    singular values arrive on the host, where rank rules read them. benchmarks/trp_projection.py times it
    against a batched SVD on the device. float64 keeps every σ above ~1e-5·σ₁ exact to float32 round-off
    (measured: 1e-7 relative error there, 8e-6 at 1e-6·σ₁, 1e-3 at 1e-7·σ₁; TRP's numerical rank starts at 1e-4·σ₁).
    A matrix holding NaN or Inf raises `NonFiniteError` (naming ``names`` as `svd` does).
    """
    return gram_eigh_many([a], None if names is None else [names], host)[0]


def gram_eigh_many(mats: list[Tensor], names: list[list[str] | None] | None = None,
                   host: bool = True) -> list[GramEigh]:
    """`gram_eigh` of several (batches of) matrices, of any shapes, with one device-to-host copy of all
    their Gram matrices and one host-to-device copy of all the singular vectors (asynchronous from pinned
    memory): a training step waits for the device once, however many shape groups there are."""
    return GramTransfer(mats, host).receive(names)


class GramTransfer:
    """`gram_eigh_many` in two halves, so that the device can work between them.

    Creating it queues the float64 Gram matrices of `mats` on their device and, with ``host``, their
    copy into pinned host memory, and returns without waiting. `receive` waits for that copy, decomposes
    on the host and sends the singular vectors back. Between the two the caller may queue more device
    work (the next training step): the host's eigendecomposition then overlaps it.
    """

    def __init__(self, mats: list[Tensor], host: bool = True):
        self.mats = mats
        self.host = host and bool(mats)
        self.lefts = [a.shape[-2] <= a.shape[-1] for a in mats]
        grams = [_gram(a.double()) for a in mats]
        self._event = None
        if self.host and grams[0].device.type != "cpu":
            flat = torch.cat([g.flatten() for g in grams])
            cuda = flat.device.type == "cuda"
            buffer = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=cuda)
            buffer.copy_(flat, non_blocking=cuda)
            if cuda:
                self._event = torch.cuda.Event()
                self._event.record(torch.cuda.current_stream(flat.device))  # the copy's device, not the current one
            grams = _split_like(buffer, grams)
        self.grams = grams

    def receive(self, names: list[list[str] | None] | None = None) -> list[GramEigh]:
        """The decompositions (waits for the Gram matrices to reach the host, if they have not yet)."""
        if self._event is not None:
            self._event.synchronize()
        out = []
        for i, (a, gram) in enumerate(zip(self.mats, self.grams)):
            if not bool(torch.isfinite(gram).all()):
                raise NonFiniteError(_nonfinite_message(a, None if names is None else names[i]))
            S, vectors = _eigh_descending(gram)
            out.append((S.cpu(), vectors))
        bases = [v for _, v in out]
        mats = self.mats
        if self.host and all(a.device == mats[0].device and a.dtype == mats[0].dtype for a in mats):
            flat = torch.cat([v.to(working_dtype(mats[0].dtype)).flatten() for v in bases])
            bases = _split_like(_to(flat, mats[0].device), bases)
        return [GramEigh(basis.to(device=a.device, dtype=working_dtype(a.dtype)), S, left)
                for a, basis, (S, _), left in zip(mats, bases, out, self.lefts)]


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype linear algebra on weights of `dtype` runs in: theirs, float32 at least (bf16/fp16 weights
    are decomposed, projected and regularized in float32, and the result rounded once)."""
    return torch.promote_types(dtype, torch.float32)


def polar_newton_schulz_many(mats: list[Tensor], **options: Any) -> list[Tensor]:
    """`polar_newton_schulz` of several (batches of) matrices of any shapes and one dtype and device, as one
    batch: each laid wide and zero-padded to the widest, which is exact (a zero row or column stays zero
    under the odd polynomials, and adds nothing to the scale ‖X·Xᵀ‖_F). One launch of each product for all
    of them, where a GPU step is bound by launches; more arithmetic, so on a CPU call it per group."""
    if len({(a.dtype, a.device) for a in mats}) > 1:
        raise ValueError("polar_newton_schulz_many: the matrices must share a dtype and a device")
    wide = [a.mT if a.shape[-2] > a.shape[-1] else a for a in mats]
    flat = [w.reshape(-1, *w.shape[-2:]) for w in wide]
    m, n = max(f.shape[-2] for f in flat), max(f.shape[-1] for f in flat)
    padded = torch.cat([torch.nn.functional.pad(f, (0, n - f.shape[-1], 0, m - f.shape[-2])) for f in flat])
    out = polar_newton_schulz(padded, **options).split([f.shape[0] for f in flat])
    return [(o[:, :w.shape[-2], :w.shape[-1]].reshape(w.shape).mT if a.shape[-2] > a.shape[-1]
             else o[:, :w.shape[-2], :w.shape[-1]].reshape(w.shape)) for a, w, o in zip(mats, wide, out)]


def _to(t: Tensor, device: torch.device) -> Tensor:
    """`t` on `device`; a host-to-GPU copy goes from pinned memory without blocking the host."""
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _split_like(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    return [part.view(t.shape) for part, t in zip(flat.split([t.numel() for t in like]), like)]


def energy_rank(S: Tensor, energy: float) -> Tensor:
    """Smallest r such that the first r singular values keep at least `energy` of Σσ².

    `S` is (..., k), sorted in decreasing order; returns an int64 tensor of shape (...) with values in
    [1, k]. When S has leading batch dimensions each matrix gets its own rank.
    """
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    e = S.double().square()
    cum = e.cumsum(-1)
    total = cum[..., -1:]
    # A relative slack absorbs the rounding of the cumulative sum, so energy=1 gives the full rank of
    # a matrix and not one past its numerically zero tail.
    kept = cum >= energy * total * (1 - 1e-12)
    return (kept.long().argmax(-1) + 1).clamp(min=1)


def numerical_rank(S: Tensor, tol: float = 1e-6) -> Tensor:
    """Number of singular values above ``tol · σ₁`` (at least 1), per matrix of a batch."""
    return (S > tol * S[..., :1]).sum(-1).clamp(min=1)


def rank_mask(S: Tensor, rank: Tensor | int) -> Tensor:
    """Boolean mask (..., k): True for the first `rank` singular values of each matrix."""
    k = S.shape[-1]
    rank = torch.as_tensor(rank, device=S.device)
    return torch.arange(k, device=S.device) < rank.unsqueeze(-1)


def reconstruct(U: Tensor, S: Tensor, Vh: Tensor) -> Tensor:
    """``U @ diag(S) @ Vh`` for batches."""
    return (U * S.unsqueeze(-2)) @ Vh


def project(a: Tensor, rank: Tensor | int) -> Tensor:
    """Best rank-`rank` approximation of `a` in Frobenius norm (Eckart–Young), batch-aware.

    `rank` may be one int or a tensor with one rank per matrix of the batch.
    """
    U, S, Vh = svd(a)
    return reconstruct(U, S * rank_mask(S, rank), Vh).to(a.dtype)


def truncate(dec: SVD, rank: int) -> SVD:
    """Keep the leading `rank` singular triplets of a decomposition."""
    return SVD(dec.U[..., :rank], dec.S[..., :rank], dec.Vh[..., :rank, :])


def transfer_energy(S: Tensor, rank: Tensor | int, rho: float = 0.0) -> Tensor:
    """LRPET energy transfer: rescale singular values so that Σσ² is unchanged by the truncation.

    The tail (beyond `rank`) is scaled by ``rho`` and the kept values by √a with
    ``a = (‖S‖² − ‖ρ·S_tail‖²) / ‖S_kept‖²``, so the pruned energy moves uniformly onto the kept values.
    """
    keep = rank_mask(S, rank)
    e = S.square()
    total = e.sum(-1, keepdim=True)
    kept = (e * keep).sum(-1, keepdim=True)
    tail = (e * ~keep).sum(-1, keepdim=True) * rho**2
    scale = ((total - tail) / kept.clamp_min(torch.finfo(S.dtype).tiny)).sqrt()
    return torch.where(keep, S * scale, S * rho)


def polar(a: Tensor) -> Tensor:
    """Orthogonal polar factor U·Vᵀ of a (batch of) matrices, exact, by SVD.

    It is the sub-gradient of the nuclear norm at a full-rank matrix.
    """
    U, _, Vh = svd(a)
    return (U @ Vh).to(a.dtype)


# Odd polynomials x ← a·x + b·x³ + c·x⁵ applied to the singular values. The cubic (1.5, −0.5, 0) converges
# quadratically to 1 for σ in (0, √3), so it yields the exact polar factor, but lifts a small σ only 1.5×
# per step. The quintic (3.4445, −4.7750, 2.0315) lifts a small σ 3.4× per step and keeps every σ of (0, 1.2]
# in (0, 1.21], without converging to 1: 10 quintic "warm-up" steps then 6 cubic ones reach the exact
# factor of an ill-conditioned matrix (σ_min/σ₁ ≈ 1e-5) where the cubic alone needs about 35 steps.
_NS_CUBIC = (1.5, -0.5, 0.0)
_NS_QUINTIC = (3.4445, -4.7750, 2.0315)


def polar_newton_schulz(a: Tensor, steps: int = 12, eps: float = 1e-7, warmup: int = 0) -> Tensor:
    """Polar factor U·Vᵀ by Newton–Schulz iterations: matrix products only, no SVD.

    The matrix is first scaled by ‖A·Aᵀ‖_F^½ (≥ σ₁, and tighter than ‖A‖_F) so all singular values lie in
    (0, 1]; `warmup` quintic steps then lift the small ones fast, and `steps` cubic steps
    X ← 1.5·X − 0.5·X·Xᵀ·X push every non-zero singular value to 1. Converges for full-rank inputs; with
    no warm-up a singular value σ/σ₁ close to 0 needs about log₁.₅(σ₁/σ) steps, so well-conditioned
    weights need about 10–15 steps, and ill-conditioned ones (square matrices, such as spatial-scheme
    forms at initialization) want ``warmup=10, steps=6`` (exact for σ/σ₁ down to about 1e-5). Singular
    values too small to be lifted in the given steps end between 0 and 1, as if they were zero. Works on
    batches and in any float dtype.
    """
    x = a.float() if a.dtype not in (torch.float32, torch.float64) else a
    transpose = x.shape[-2] > x.shape[-1]
    if transpose:  # iterate on the wide form so X·Xᵀ is the small Gram matrix
        x = x.mT
    wide = x.shape
    x = x.reshape(-1, *wide[-2:])  # one batch dimension, as baddbmm takes
    x = x / ((x @ x.mT).norm(dim=(-2, -1), keepdim=True).sqrt() + eps)
    for i in range(warmup + steps):
        alpha, beta, gamma = _NS_QUINTIC if i < warmup else _NS_CUBIC
        gram = x @ x.mT
        # fused multiply-adds: 3 kernels a quintic step, 2 a cubic one (8 and 5 as separate products and sums)
        if gamma:
            x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=beta, alpha=gamma), x, beta=alpha)
        else:
            x = torch.baddbmm(x, gram, x, beta=alpha, alpha=beta)
    x = x.reshape(wide)
    if transpose:
        x = x.mT
    return x.to(a.dtype)
