"""Precision, recall (Kynkaenniemi et al. 2019), density and coverage (Naeem et al. 2020).

Same definitions and the same numbers as the ``prdc`` package (Naeem et al.'s reference code),
computed in bounded memory: no n x n matrix is ever built, only row chunks of it.

How the numbers stay exact while the bulk of the work is fast float32 maths:

1. Distances of every chunk are first *approximated* with one float32 GEMM (the
   ``|a|^2 + |b|^2 - 2 a.b`` trick on mean-centred copies). A rigorous floating-point error
   bound ``e_ij = c * (|a_i|^2 + |b_j|^2)`` (``c`` from the standard GEMM error analysis,
   ``gamma_d = d u / (1 - d u)``, doubled for safety) brackets every exact squared distance.
2. Every comparison the metrics need (``d_ij < radius``) that the bracket decides is taken
   from the approximation. The few pairs the bracket cannot decide are recomputed exactly in
   float64 with the difference formula ``sum((a - b)^2)`` and compared the way ``prdc`` does.
3. k-NN radii: the ``k + 1`` approximate nearest give an upper bound on the true radius; every
   point whose lower bound is under it is recomputed exactly, and the radius is the
   ``(k + 1)``-th smallest exact value (self included, as ``prdc`` counts it).

``prdc`` rounds distances to the precision of the features (sklearn returns float32 distances
for float32 features: squared distance in float64, cast to float32, sqrt in float32). The exact
step here does the same rounding, so ties and near-ties fall the same way as in ``prdc``.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

__all__ = ["prdc", "compute_knn_sq_radii"]

_CHUNK_ELEMS = 1 << 24  # elements of one (rows x columns) distance chunk: 64 MiB in float32
_BLOCK_ELEMS = 1 << 22  # elements of one block when centring / averaging the inputs
_PAIR_ELEMS = 1 << 18  # elements of one gathered (pairs x features) block: small stays in cache
_MARGIN = 8  # extra k-NN candidates kept per row, so the exact radius is certified from them


# ----------------------------------------------------------------------------- input checks
def _to_tensor(x: Any, name: str) -> torch.Tensor:
    """A 2-D tensor sharing memory with ``x`` where possible (features may be large)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise ValueError(f"{name}: features must be numeric, got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr)
        with warnings.catch_warnings():
            # read-only arrays (e.g. from Ray's object store) are fine: nothing here writes to them
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(arr)
    if t.ndim != 2:
        raise ValueError(f"{name}: features must be a 2-D (n_samples, n_features) array, got shape {tuple(t.shape)}")
    if t.is_complex():
        raise ValueError(f"{name}: complex features are not supported")
    if t.dtype not in (torch.float32, torch.float64):
        # like sklearn's pairwise distances: anything that is not float32 is computed in float64
        t = t.to(torch.float64)
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: features contain NaN or inf values")
    return t


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _check_count(t: torch.Tensor, k: int, name: str) -> None:
    if t.shape[0] < k + 1:
        raise ValueError(f"{name}: k-NN with k={k} needs at least k+1={k + 1} samples, got {t.shape[0]}")


# ----------------------------------------------------------------------------- numerics
def _approx_dtype(device: torch.device) -> torch.dtype:
    """float32 GEMMs on CPU (2x faster than float64); float64 wherever float32 may secretly be
    lower precision (TF32 on CUDA, bf16 under a non-'highest' matmul precision), because the
    error bound assumes IEEE arithmetic in the dtype used."""
    if device.type == "cpu" and torch.get_float32_matmul_precision() == "highest":
        return torch.float32
    return torch.float64


def _error_coeff(d: int, dtype: torch.dtype) -> float:
    """``c`` with ``|approx d^2 - exact d^2| <= c (|a|^2 + |b|^2)`` (see the module docstring)."""
    u = torch.finfo(dtype).eps / 2
    gamma = (d + 2) * u / (1 - (d + 2) * u)
    return 2.0 * (gamma + 12 * u)


def _out_unit(t: torch.Tensor) -> float:
    return torch.finfo(t.dtype).eps / 2


def _round_like_prdc(d2: torch.Tensor, float32: bool) -> torch.Tensor:
    """Distance values exactly as sklearn (hence prdc) produces them, returned as float64."""
    if float32:
        return torch.sqrt(d2.to(torch.float32).clamp_min_(0)).to(torch.float64)
    return torch.sqrt(d2.clamp_min(0))


def _centre(x: torch.Tensor, mean: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(x - mean) in ``dtype`` and its squared row norms in float64, built block by block so a
    float64 copy of a large float32 set never exists. Centring keeps norms close to distances,
    which keeps the error bound (proportional to norms) tight."""
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    norms = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    rows = max(1, _BLOCK_ELEMS // max(1, x.shape[1]))
    for s in range(0, x.shape[0], rows):
        block = x[s : s + rows].to(torch.float64) - mean
        out[s : s + rows] = block
        norms[s : s + rows] = out[s : s + rows].to(torch.float64).pow(2).sum(1)
    return out, norms


def _exact_sq_dists(a: torch.Tensor, b: torch.Tensor, ia: torch.Tensor, jb: torch.Tensor) -> torch.Tensor:
    """sum((a[ia] - b[jb])^2) in float64 for a list of pairs (difference formula: no cancellation)."""
    out = torch.empty(ia.shape[0], dtype=torch.float64, device=a.device)
    step = max(1, _PAIR_ELEMS // max(1, a.shape[1]))
    for s in range(0, ia.shape[0], step):
        diff = torch.index_select(a, 0, ia[s : s + step]).to(torch.float64)
        diff.sub_(torch.index_select(b, 0, jb[s : s + step]))  # float32 - float32 is exact in float64
        out[s : s + step] = torch.linalg.vecdot(diff, diff)
    return out


def _kth_smallest_per_row(rows: torch.Tensor, values: torch.Tensor, n_rows: int, k: int) -> torch.Tensor:
    """The k-th (0-based) smallest of ``values`` grouped by ``rows`` (each group has more than k)."""
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]
    counts = torch.bincount(rows, minlength=n_rows)
    if bool((counts <= k).any()):  # cannot happen while the error bound holds
        raise RuntimeError("internal error: too few k-NN candidates in a row")
    starts = torch.cumsum(counts, 0) - counts
    return values[order[starts + k]]


def _chunk_rows(n_cols: int, chunk_elems: int) -> int:
    return max(1, chunk_elems // max(1, n_cols))


# ----------------------------------------------------------------------------- k-NN radii
def _merge_topk(vals: torch.Tensor, idx: torch.Tensor, r0: int, r1: int, block: torch.Tensor, c0: int) -> None:
    """Fold the smallest entries of ``block`` (rows r0:r1, columns from c0) into the running top-K."""
    kk = min(vals.shape[1], block.shape[1])
    bv, bi = torch.topk(block, kk, dim=1, largest=False, sorted=False)
    cv = torch.cat([vals[r0:r1], bv], 1)
    ci = torch.cat([idx[r0:r1], bi + c0], 1)
    tv, ti = torch.topk(cv, vals.shape[1], dim=1, largest=False, sorted=True)
    vals[r0:r1] = tv
    idx[r0:r1] = ci.gather(1, ti)


def _radii_from_candidates(x: torch.Tensor, rows: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor,
                           cn: torch.Tensor, k: int, slack: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact radii of ``rows`` from their approximate nearest candidates (``vals``/``idx``, one row
    per entry of ``rows``). Returns (radii, certified): a radius is certified when no point outside
    the candidates can be nearer than it."""
    v = vals.to(torch.float64)
    cn_i = cn[rows]
    # the k+1 nearest candidates have exact distances <= approx + bound, so the (k+1)-th smallest
    # exact distance (the radius) is at most the largest of those upper bounds (self is -inf)
    upper = (v[:, : k + 1] + cn[idx[:, : k + 1]]).max(1).values + cn_i
    upper = upper + upper.abs() * slack
    if vals.shape[1] < x.shape[0]:
        # anything outside the candidates is at least the K-th approx value minus the largest bound
        certified = v[:, -1] - slack * v[:, -1].abs() - cn_i - cn.max() > upper
    else:
        certified = torch.ones_like(upper, dtype=torch.bool)
    maybe = (v - cn[idx] - cn_i[:, None] <= upper[:, None]) & certified[:, None]
    pi, pk = maybe.nonzero(as_tuple=True)
    radii = torch.full((len(rows),), math.nan, dtype=torch.float64, device=x.device)
    if pi.numel():
        exact = _exact_sq_dists(x, x, rows[pi], idx[pi, pk])
        ok = certified.nonzero(as_tuple=True)[0]
        # renumber the certified rows 0..m-1 for the grouped k-th smallest
        local = torch.full((len(rows),), -1, dtype=torch.int64, device=x.device)
        local[ok] = torch.arange(len(ok), device=x.device)
        radii[ok] = _kth_smallest_per_row(local[pi], exact, len(ok), k)
    return radii, certified


def _radii_full_rows(x: torch.Tensor, xa: torch.Tensor, norms_a: torch.Tensor, cn: torch.Tensor,
                     rows: torch.Tensor, k: int, chunk_elems: int) -> torch.Tensor:
    """Fallback for rows the candidates could not certify (ties, outliers): scan the whole row and
    recompute exactly every point whose lower bound is under the radius' upper bound."""
    n = x.shape[0]
    adt = xa.dtype
    out = torch.empty(len(rows), dtype=torch.float64, device=x.device)
    step = _chunk_rows(n, chunk_elems)
    for s in range(0, len(rows), step):
        r = rows[s : s + step]
        d2 = torch.addmm(norms_a[r, None] + norms_a[None, :], xa[r], xa.T, beta=1.0, alpha=-2.0)
        d2[torch.arange(len(r), device=x.device), r] = -math.inf  # self first
        vals, idx = torch.topk(d2, k + 1, dim=1, largest=False, sorted=False)
        upper = (vals.to(torch.float64) + cn[idx]).max(1).values + cn[r]
        upper = upper + upper.abs() * 8 * torch.finfo(adt).eps + cn[r]
        maybe = (d2 - cn.to(adt)[None, :]) <= upper.to(adt)[:, None]
        pi, pj = maybe.nonzero(as_tuple=True)
        exact = _exact_sq_dists(x, x, r[pi], pj)
        out[s : s + step] = _kth_smallest_per_row(pi, exact, len(r), k)
    return out


@torch.no_grad()
def _knn_sq_radii(x: torch.Tensor, k: int, chunk_elems: int) -> torch.Tensor:
    """Exact squared distance to the k-th nearest neighbour of each row (self not counted).

    The approximate distance matrix is swept in square blocks of the upper triangle only (it is
    symmetric): each block updates the running top-K of its rows and, transposed, of its columns,
    so the GEMM work is half of a full n x n sweep."""
    n, d = x.shape
    adt = _approx_dtype(x.device)
    c = _error_coeff(d, adt)
    xa, norms = _centre(x, _blocked_mean(x), adt)
    norms_a = norms.to(adt)
    cn = c * norms  # per-point half of the error bound, float64
    kk = min(n, k + 1 + _MARGIN)
    vals = torch.full((n, kk), math.inf, dtype=adt, device=x.device)
    idx = torch.zeros((n, kk), dtype=torch.int64, device=x.device)
    b = max(1, math.isqrt(chunk_elems))
    for s in range(0, n, b):
        e = min(n, s + b)
        for t in range(s, n, b):
            u = min(n, t + b)
            d2 = torch.addmm(norms_a[s:e, None] + norms_a[None, t:u], xa[s:e], xa[t:u].T, beta=1.0, alpha=-2.0)
            if t == s:
                d2.diagonal().fill_(-math.inf)  # self is the nearest (distance 0): pin it
            _merge_topk(vals, idx, s, e, d2, t)
            if t != s:
                _merge_topk(vals, idx, t, u, d2.T, s)
            del d2
    rows = torch.arange(n, device=x.device)
    radii, certified = _radii_from_candidates(x, rows, vals, idx, cn, k, 8 * torch.finfo(adt).eps)
    bad = (~certified).nonzero(as_tuple=True)[0]
    if bad.numel():
        radii[bad] = _radii_full_rows(x, xa, norms_a, cn, bad, k, chunk_elems)
    return radii


def _blocked_mean(x: torch.Tensor) -> torch.Tensor:
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    rows = max(1, _BLOCK_ELEMS // max(1, x.shape[1]))
    for s in range(0, x.shape[0], rows):
        total += x[s : s + rows].to(torch.float64).sum(0)
    return total / x.shape[0]


def compute_knn_sq_radii(feats: Any, k: int = 5, *, chunk_elems: int = _CHUNK_ELEMS) -> np.ndarray:
    """Squared Euclidean distance from each sample to its k-th nearest other sample, float64.

    Precompute this once for a reference set and pass it to :func:`prdc` as ``real_sq_radii``.
    """
    k = _check_k(k)
    x = _to_tensor(feats, "feats")
    _check_count(x, k, "feats")
    return _knn_sq_radii(x, k, chunk_elems).cpu().numpy()


# ----------------------------------------------------------------------------- real x fake pass
@torch.no_grad()
def _cross_pass(real: torch.Tensor, fake: torch.Tensor, rr2: torch.Tensor, rf2: torch.Tensor,
                chunk_elems: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per fake: how many real balls contain it. Per real: does its ball contain a fake
    (coverage), is it inside some fake ball (recall)."""
    n_r, d = real.shape
    n_f = fake.shape[0]
    adt = _approx_dtype(real.device)
    c = _error_coeff(d, adt)
    r32, f32 = real.dtype == torch.float32, fake.dtype == torch.float32
    cross32 = r32 and f32  # sklearn computes the cross distances in float32 only if both are
    # radii as prdc sees them (each set's own precision), and the pair distance's precision
    rr_v = _round_like_prdc(rr2, r32)
    rf_v = _round_like_prdc(rf2, f32)
    # a squared distance below lo (above hi) gives a rounded distance strictly below (not below)
    # the rounded radius whatever the rounding: 16 units of the coarser precision in between
    u = max(_out_unit(real), _out_unit(fake), 2.0 ** -24 if cross32 else 2.0 ** -53)
    mean = _blocked_mean(real)
    ra, nr = _centre(real, mean, adt)
    fa, nf = _centre(fake, mean, adt)
    cr, cf = c * nr, c * nf
    eps_a = 4 * torch.finfo(adt).eps  # slack for casting the float64 thresholds to ``adt``
    in_lo = rr2 * (1 - 16 * u) - cr  # real ball i, before subtracting c|f_j|^2
    in_lo = in_lo - in_lo.abs() * eps_a
    in_hi = (rr2 * (1 + 16 * u) + cr) * (1 + eps_a)
    rec_lo = (rf2 * (1 - 16 * u) - cf)
    rec_lo = rec_lo - rec_lo.abs() * eps_a
    rec_hi = (rf2 * (1 + 16 * u) + cf) * (1 + eps_a)
    in_lo, in_hi, rec_lo, rec_hi = (t.to(adt) for t in (in_lo, in_hi, rec_lo, rec_hi))
    nr_a, nf_a, cr_a, cf_a = nr.to(adt), nf.to(adt), cr.to(adt), cf.to(adt)

    counts = torch.zeros(n_f, dtype=torch.int64, device=real.device)
    covered = torch.zeros(n_r, dtype=torch.bool, device=real.device)
    recalled = torch.zeros(n_r, dtype=torch.bool, device=real.device)
    rows = _chunk_rows(n_f, chunk_elems)
    for s in range(0, n_r, rows):
        e = min(n_r, s + rows)
        d2 = torch.addmm(nr_a[s:e, None] + nf_a[None, :], ra[s:e], fa.T, beta=1.0, alpha=-2.0)
        # fake j inside real ball i: sure when d2 + bound < lo, impossible when d2 - bound >= hi
        t = d2 + cf_a[None, :]
        inside = t < in_lo[s:e, None]
        t = torch.sub(d2, cf_a[None, :], out=t)
        amb_in = (t < in_hi[s:e, None]) & ~inside
        # real i inside fake ball j (recall)
        t = torch.add(d2, cr_a[s:e, None], out=t)
        recall = t < rec_lo[None, :]
        t = torch.sub(d2, cr_a[s:e, None], out=t)
        amb_rec = (t < rec_hi[None, :]) & ~recall
        del t, d2
        amb = amb_in | amb_rec
        pi, pj = amb.nonzero(as_tuple=True)
        if pi.numel():
            dist = _round_like_prdc(_exact_sq_dists(real, fake, pi + s, pj), cross32)
            inside[pi, pj] = dist < rr_v[pi + s]
            recall[pi, pj] = dist < rf_v[pj]
        counts += inside.sum(0)
        # coverage: the nearest fake is inside the ball  <=>  some fake is inside the ball
        covered[s:e] = inside.any(1)
        recalled[s:e] = recall.any(1)
    return counts, covered, recalled


def prdc(real: Any, fake: Any, k: int = 5, *, real_sq_radii: Any = None,
         chunk_elems: int = _CHUNK_ELEMS) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` against ``real`` with k-NN balls.

    ``real``/``fake``: (n, d) numpy arrays or torch tensors (CPU or CUDA). ``real_sq_radii``:
    optional output of :func:`compute_knn_sq_radii` for ``real`` with the same ``k`` (saves a
    pass when the reference set is fixed). Memory stays around ``chunk_elems`` * ~12 bytes on top
    of the inputs and one mean-centred float32 copy of each.
    """
    k = _check_k(k)
    r = _to_tensor(real, "real")
    f = _to_tensor(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"real and fake features have different widths: {r.shape[1]} vs {f.shape[1]}")
    _check_count(r, k, "real")
    _check_count(f, k, "fake")
    if f.device != r.device:
        f = f.to(r.device)
    rf2 = _knn_sq_radii(f, k, chunk_elems)
    if real_sq_radii is None:
        rr2 = _knn_sq_radii(r, k, chunk_elems)
    else:
        rr2 = torch.as_tensor(np.asarray(real_sq_radii, dtype=np.float64), device=r.device)
        if rr2.shape != (r.shape[0],):
            raise ValueError(f"real_sq_radii must have shape ({r.shape[0]},), got {tuple(rr2.shape)}")
    counts, covered, recalled = _cross_pass(r, f, rr2, rf2, chunk_elems)
    n_f = f.shape[0]
    total = int(counts.sum())
    return dict(
        precision=float(int((counts > 0).sum()) / n_f),
        recall=float(int(recalled.sum()) / r.shape[0]),
        # same operation order as prdc: (1/k) * mean of counts
        density=float((1.0 / float(k)) * (total / n_f)),
        coverage=float(int(covered.sum()) / r.shape[0]),
    )
