"""Precision, recall (Kynkaenniemi et al. 2019), density and coverage (Naeem et al. 2020).

Same definitions and the same numbers as the ``prdc`` package (Naeem et al.'s reference code),
computed in bounded memory: no n x n matrix is ever built, only chunks of it.

How the numbers stay exact while the bulk of the work is fast low-precision maths:

1. Distances of every chunk are first *approximated* with one GEMM (the
   ``|a|^2 + |b|^2 - 2 a.b`` trick on mean-centred copies): in bfloat16 on CPUs with AMX
   (3.6x the float32 GEMM rate on the reference machine), else in float32 on CPU, float64 on
   GPUs (``gemm_dtype`` overrides). A rigorous floating-point error bound brackets every exact
   squared distance: ``c (|a_i|^2 + |b_j|^2)`` for float32/float64 (``c`` from the standard GEMM
   error analysis, ``gamma_d = d u / (1 - d u)``, doubled for safety); for bfloat16, terms built
   from each point's actual rounding error ``|bf16(a) - a|`` plus a per-pair term for the
   rounding of the GEMM's bf16 output, around a float32 accumulation (oneDNN's bf16 GEMM; see
   ``_centre``). Measured on 2,000 x 2,000 Inception-like 2,048-d features, every pair's
   bfloat16 bound was at least 3.05x its actual error (median 42x): safe, and still tight
   enough that few pairs stay undecided (at 5,000 x 5,000: 0.06 % of the cross pairs).
2. Every comparison the metrics need (``d_ij < radius``) that the bracket decides is taken
   from the approximation. The few pairs the bracket cannot decide are recomputed exactly in
   float64 with the difference formula ``sum((a - b)^2)`` and compared the way ``prdc`` does.
3. k-NN radii: each row's top-(k + 1 + margin) approximate distances (from the upper triangle of
   the symmetric matrix, or from whole-row strips for bfloat16, whose small GEMMs are slow) give
   each radius an interval; only candidates whose own interval overlaps it are recomputed
   exactly (a few per row), and the radius is the right order statistic among them (self
   counted, as ``prdc`` counts it). Rows the candidates cannot certify (many ties, outliers)
   are rescanned in full.

``prdc`` rounds distances to the precision of the features (sklearn returns float32 distances
for float32 features: squared distance in float64, cast to float32, sqrt in float32). The exact
step here does the same rounding, so ties and near-ties fall the same way as in ``prdc``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

__all__ = ["prdc", "compute_knn_sq_radii"]

_CHUNK_ELEMS = 1 << 24  # elements of one distance chunk: 64 MiB in float32
_BLOCK_ELEMS = 1 << 22  # elements of one block when centring / averaging the inputs
_PAIR_ELEMS = 1 << 18  # elements of one gathered (pairs x features) block: small stays in cache
_MARGIN = 8  # extra k-NN candidates kept per row, so the exact radius is certified from them
_MARGIN_BF16 = 32  # the same with a bfloat16 GEMM


# ----------------------------------------------------------------------------- input checks
def _to_tensor(x: Any, name: str) -> torch.Tensor:
    """A 2-D float tensor sharing memory with ``x`` where possible (features may be large)."""
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
    return t.contiguous()


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _check_count(t: torch.Tensor, k: int, name: str) -> None:
    if t.shape[0] < k + 1:
        raise ValueError(f"{name}: k-NN with k={k} needs at least k+1={k + 1} samples, got {t.shape[0]}")


def _checked_mean(x: torch.Tensor, name: str) -> torch.Tensor:
    """Column means in float64, block by block; also the NaN/inf check (one pass over the data
    instead of two): a NaN or inf anywhere makes its column's sum non-finite."""
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    rows = max(1, _BLOCK_ELEMS // max(1, x.shape[1]))
    for s in range(0, x.shape[0], rows):
        total += x[s : s + rows].sum(0, dtype=torch.float64)
    if not bool(torch.isfinite(total).all()):
        raise ValueError(f"{name}: features contain NaN or inf values")
    return total / x.shape[0]


# ----------------------------------------------------------------------------- numerics
GEMM_DTYPES = (torch.bfloat16, torch.float32, torch.float64)


def _fast_bf16_cpu() -> bool:
    """AMX tiles: bf16 GEMMs several times faster than float32 (oneDNN, float32 accumulation)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) and torch.backends.mkldnn.is_available() if probe is not None else False
    except Exception:  # a private probe: any failure just means "not known to be fast"
        return False


def _approx_dtype(device: torch.device, requested: Optional[torch.dtype] = None) -> torch.dtype:
    """The GEMM dtype of the approximate pass. Auto: bfloat16 on CPUs with AMX; float32 on other
    CPUs; float64 wherever float32 may secretly be lower precision (TF32 on CUDA, bf16 under a
    non-'highest' matmul precision), because the error bound assumes IEEE arithmetic in the dtype
    used. bfloat16 is CPU-only: CUDA may reduce bf16 GEMMs in reduced precision."""
    if requested is not None:
        if requested not in GEMM_DTYPES:
            raise ValueError(f"gemm_dtype must be one of {[str(d) for d in GEMM_DTYPES]} or None, got {requested}")
        if requested == torch.bfloat16 and device.type != "cpu":
            raise ValueError("gemm_dtype=torch.bfloat16 is only supported for CPU tensors")
        if requested == torch.float32 and (device.type != "cpu" or torch.get_float32_matmul_precision() != "highest"):
            raise ValueError("gemm_dtype=torch.float32 needs CPU tensors and torch.get_float32_matmul_precision() "
                             "== 'highest' (the error bound assumes IEEE float32 GEMMs)")
        return requested
    if device.type == "cpu":
        if _fast_bf16_cpu():
            return torch.bfloat16
        if torch.get_float32_matmul_precision() == "highest":
            return torch.float32
    return torch.float64


def _compute_dtype(gemm_dtype: torch.dtype) -> torch.dtype:
    """The dtype approximate squared distances are assembled and compared in."""
    return torch.float32 if gemm_dtype == torch.bfloat16 else gemm_dtype


def _error_coeff(d: int, dtype: torch.dtype) -> float:
    """``c`` with ``|approx d^2 - exact d^2| <= c (|a|^2 + |b|^2)`` for a float32/float64 GEMM
    (see the module docstring; the bfloat16 bound is built in ``_centre``)."""
    u = torch.finfo(dtype).eps / 2
    gamma = (d + 2) * u / (1 - (d + 2) * u)
    return 2.0 * (gamma + 12 * u)


# bfloat16 GEMM: unit roundoff of bf16, weight of the per-pair output-rounding term, AM-GM split
_U_BF16 = torch.finfo(torch.bfloat16).eps / 2  # 2^-8
_W_OUT_BF16 = 2 * _U_BF16 / (1 - _U_BF16)
_T_BF16 = _U_BF16 / math.sqrt(6)  # ~ |bf16(a) - a| / |a| for typical data; any t > 0 is rigorous


def _round_like_prdc(d2: torch.Tensor, float32: bool) -> torch.Tensor:
    """Distance values exactly as sklearn (hence prdc) produces them, returned as float64."""
    if float32:
        return torch.sqrt(d2.to(torch.float32).clamp_min_(0)).to(torch.float64)
    return torch.sqrt(d2.clamp_min(0))


@dataclass
class _Centred:
    """A feature set, mean-centred in the GEMM dtype, with its error-bound terms.

    The bound on a pair's approximate squared distance is ``cn_i + cn_j + w_out |o_ij|``, where
    ``o_ij`` is the GEMM's output (a_i.b_j); ``w_out`` is 0 except for a bfloat16 GEMM, whose
    output rounding is bounded per pair rather than by the norms."""

    x: torch.Tensor  # the original features (exact step)
    a: torch.Tensor  # (x - mean) in the GEMM dtype
    norms_a: torch.Tensor  # |a_i|^2 in the compute dtype (float32 for a bfloat16 GEMM)
    cn: torch.Tensor  # this point's half of every pair's bound, float64
    w_out: float = 0.0


def _centre(x: torch.Tensor, mean: torch.Tensor, gemm_dtype: torch.dtype) -> _Centred:
    """Centring keeps norms close to distances, which keeps the error bound (proportional to
    norms) tight. Built block by block so no float64 copy of a large float32 set exists; a shift
    by a float32-rounded mean is still an exact translation, so distances are unchanged.

    bfloat16 GEMM of the float32-centred ``p`` rounded to ``h = bf16(p)``, ``e = h - p`` (exact):
    ``h_i.h_j - p_i.p_j = h_i.e_j + e_i.p_j``, so with float32 accumulation (``g = gamma_d``) and
    the output ``o`` rounded to bf16 (``u = 2^-8``): ``|o - p_i.p_j| <= |h_i||e_j| + |e_i||p_j| +
    g|h_i||h_j| + u/(1-u)|o|``. Doubled (d^2 = ... - 2o) and split per point with
    ``2xy <= t x^2 + y^2/t``: ``cn_p = t max(|h_p|^2, |p|^2) + |e_p|^2/t + g|h_p|^2`` plus the float32
    centring/assembly term, and the per-pair ``w_out |o|``."""
    cdt = _compute_dtype(gemm_dtype)
    c = _error_coeff(x.shape[1], cdt)
    a = torch.empty(x.shape, dtype=gemm_dtype, device=x.device)
    norms = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    bf16 = gemm_dtype == torch.bfloat16
    if bf16:
        h_norms = torch.empty_like(norms)
        e_norms = torch.empty_like(norms)
    # the shift is rounded to float32 so that it is the very same number for a float32 and a
    # float64 set centred on the same mean (the cross pass): a shared exact translation
    shift = mean.to(torch.float32)
    rows = max(1, _BLOCK_ELEMS // max(1, x.shape[1]))
    for s in range(0, x.shape[0], rows):
        src = x[s : s + rows]
        if x.dtype == cdt:  # one rounding in ``cdt``, as the error bound assumes
            blk = torch.sub(src, shift.to(cdt))
        else:  # in float64, then rounded once to ``cdt``
            blk = (src.to(torch.float64) - shift.to(torch.float64)).to(cdt)
        a[s : s + rows] = blk
        if not bf16:
            norms[s : s + rows] = (blk * blk).sum(1, dtype=torch.float64)
        else:  # float32 sums (10x faster than float64 ones); their error is part of the bound below
            norms[s : s + rows] = (blk * blk).sum(1)
            h = a[s : s + rows].to(torch.float32)
            h_norms[s : s + rows] = (h * h).sum(1)
            h.sub_(blk)  # e = h - p: exact (same sign, within a factor 2)
            e_norms[s : s + rows] = (h * h).sum(1)
    cn = c * norms
    w_out = 0.0
    if bf16:
        u32 = torch.finfo(torch.float32).eps / 2
        d = x.shape[1]
        g = d * u32 / (1 - d * u32)
        # a float32 sum of d rounded squares is within gamma_{d+1} of the true one, whatever the order
        g1 = (d + 1) * u32 / (1 - (d + 1) * u32)
        up = 1 / (1 - g1) * (1 + 2.0 ** -20)  # upper bounds on the true squared norms
        n_up, h_up, e_up = norms * up, h_norms * up, e_norms * up
        t = _T_BF16
        # the bf16 GEMM's part; c |p|^2 with upper norms; the assembly uses the float32 norms, each
        # off by at most g1 |p|^2 (counted twice, generously)
        cn = c * n_up + t * torch.maximum(h_up, n_up) + e_up / t + g * h_up + 2 * g1 * n_up
        # bf16 hardware treats subnormal inputs (< 2^-126) as zero and flushes subnormal results:
        # at most 2^-126 sqrt(d) (|a| + |b|) + 2^-125 on a squared distance; split per point, generously
        cn = cn + 2.0 ** -120 * math.sqrt(d) * (norms.sqrt() + 1)
        w_out = _W_OUT_BF16
    return _Centred(x, a, norms.to(cdt), cn, w_out)


def _gemm_sq_dists(a: torch.Tensor, na: torch.Tensor, b: torch.Tensor, nb: torch.Tensor,
                   w_out: float = 0.0) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Approximate squared distances ``|a_i|^2 + |b_j|^2 - 2 a_i.b_j`` in the compute dtype, and
    the per-pair bound term ``w_out |a_i.b_j|`` (None when ``w_out`` is 0)."""
    if a.dtype == torch.bfloat16:  # bf16 GEMM (bf16 output), assembled in float32
        o = torch.mm(a, b.T)
        d2 = o.to(torch.float32)
        pair = None
        if w_out:
            pair = d2.abs().mul_(w_out * (1 + 2.0 ** -20))  # |o| exact; the product rounded up generously
        d2.mul_(-2.0)  # exact
        d2.add_(na[:, None])
        d2.add_(nb[None, :])
        return d2, pair
    return torch.addmm(na[:, None] + nb[None, :], a, b.T, beta=1.0, alpha=-2.0), None


def _exact_sq_dists(a: torch.Tensor, b: torch.Tensor, ia: torch.Tensor, jb: torch.Tensor) -> torch.Tensor:
    """sum((a[ia] - b[jb])^2) in float64 for a list of pairs (difference formula: no cancellation)."""
    out = torch.empty(ia.shape[0], dtype=torch.float64, device=a.device)
    step = max(1, _PAIR_ELEMS // max(1, a.shape[1]))
    for s in range(0, ia.shape[0], step):
        diff = torch.index_select(a, 0, ia[s : s + step]).to(torch.float64)
        diff.sub_(torch.index_select(b, 0, jb[s : s + step]))  # float32 - float32 is exact in float64
        out[s : s + step] = torch.linalg.vecdot(diff, diff)
    return out


def _kth_smallest_per_row(rows: torch.Tensor, values: torch.Tensor, n_rows: int, kth: Any) -> torch.Tensor:
    """The kth (0-based; an int or one per row) smallest of ``values`` grouped by ``rows``."""
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]
    counts = torch.bincount(rows, minlength=n_rows)
    if bool((counts <= kth).any()):  # cannot happen while the error bound holds
        raise RuntimeError("internal error: too few k-NN candidates in a row")
    starts = torch.cumsum(counts, 0) - counts
    return values[order[starts + kth]]


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


def _radii_from_candidates(s: _Centred, vals: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact radii from each row's K approximate nearest (``vals`` ascending, ``idx``).

    Every candidate's exact distance lies in [L, U] = approx -/+ bound, so the radius (the
    (k+1)-th smallest exact) lies in [R_lo, R_hi] = the (k+1)-th smallest L and U. Candidates
    with U < R_lo are surely nearer, those with L > R_hi surely farther; only the rest (usually
    just one) are recomputed exactly. Returns (radii, certified): a row is certified when no
    point outside its candidates can be nearer than R_hi."""
    n, kk = vals.shape
    slack = 8 * torch.finfo(vals.dtype).eps  # float64 evaluation of the bounds themselves
    v = vals.to(torch.float64)
    finite = torch.where(torch.isinf(v), torch.zeros_like(v), v)
    e = s.cn[idx] + s.cn[:, None] + finite.abs() * slack
    na = s.norms_a.to(torch.float64)
    if s.w_out:  # |o_ij| = |na_i + na_j - v_ij| / 2, up to float32 assembly errors (in slack)
        c_ij = na[:, None] + na[idx]
        e = e + (s.w_out / 2) * ((c_ij - finite).abs() * (1 + slack) + (4 * finite.abs() + c_ij) * slack)
    lo, hi = v - e, v + e  # self: -inf on both sides, exact 0
    r_lo = torch.kthvalue(lo, k + 1, dim=1).values
    r_hi = torch.kthvalue(hi, k + 1, dim=1).values
    if kk < n:
        # every non-candidate is at least the K-th approx value minus the largest bound
        vk = v[:, -1]
        floor = vk - vk.abs() * slack - s.cn - s.cn.max()
        if s.w_out:  # v - w/2 |C - v| grows with v (w < 2): its least value over v >= vk is at vk
            far = torch.maximum((na + na.max() - vk).abs(), (na + na.min() - vk).abs())
            floor = floor - (s.w_out / 2) * (far * (1 + slack) + (4 * vk.abs() + na + na.max()) * slack)
        certified = floor > r_hi
    else:
        certified = torch.ones(n, dtype=torch.bool, device=v.device)
    below = hi < r_lo[:, None]
    unsure = ~below & (lo <= r_hi[:, None]) & certified[:, None]
    kth = k - below.sum(1)  # radius = kth (0-based) smallest exact among the unsure
    pi, pk = unsure.nonzero(as_tuple=True)
    radii = torch.full((n,), math.nan, dtype=torch.float64, device=v.device)
    ok = certified.nonzero(as_tuple=True)[0]
    if ok.numel():
        exact = _exact_sq_dists(s.x, s.x, pi, idx[pi, pk])
        local = torch.full((n,), -1, dtype=torch.int64, device=v.device)
        local[ok] = torch.arange(len(ok), device=v.device)
        radii[ok] = _kth_smallest_per_row(local[pi], exact, len(ok), kth[ok])
    return radii, certified


def _radii_full_rows(s: _Centred, rows: torch.Tensor, k: int, chunk_elems: int) -> torch.Tensor:
    """Fallback for rows the candidates could not certify (ties, outliers): scan the whole row and
    recompute exactly every point whose lower bound is under the radius' upper bound."""
    n = s.x.shape[0]
    out = torch.empty(len(rows), dtype=torch.float64, device=s.x.device)
    cdt = s.norms_a.dtype
    slack = 8 * torch.finfo(cdt).eps
    step = _chunk_rows(n, chunk_elems)
    cn_a = s.cn.to(cdt)
    for t in range(0, len(rows), step):
        r = rows[t : t + step]
        d2, pair = _gemm_sq_dists(s.a[r], s.norms_a[r], s.a, s.norms_a, s.w_out)
        d2[torch.arange(len(r), device=d2.device), r] = -math.inf  # self first
        vals, idx = torch.topk(d2, k + 1, dim=1, largest=False, sorted=False)
        hi = vals.to(torch.float64) + s.cn[idx]
        if pair is not None:
            hi = hi + pair.gather(1, idx).to(torch.float64)
        upper = hi.max(1).values + s.cn[r]
        upper = upper + upper.abs() * slack + s.cn[r]
        lo = d2 - cn_a[None, :]
        if pair is not None:
            lo.sub_(pair)
        maybe = lo <= upper.to(cdt)[:, None]
        pi, pj = maybe.nonzero(as_tuple=True)
        exact = _exact_sq_dists(s.x, s.x, r[pi], pj)
        out[t : t + step] = _kth_smallest_per_row(pi, exact, len(r), k)
    return out


@torch.no_grad()
def _knn_sq_radii(s: _Centred, k: int, chunk_elems: int) -> torch.Tensor:
    """Exact squared distance to the k-th nearest neighbour of each row (self not counted).

    Candidates first: each row's K smallest approximate distances, from the upper triangle of the
    (symmetric) matrix in square blocks (half the GEMM work; each block updates the running top-K
    of its rows and, transposed, of its columns) or, with a bfloat16 GEMM, from whole-row strips.
    Then the exact radii from the candidates, and a full rescan of rows they cannot certify."""
    n = s.x.shape[0]
    if s.a.dtype == torch.bfloat16:
        # the looser bfloat16 bound leaves more candidates undecided: keep more of them; and
        # small bf16 GEMMs are slow, so sweep whole-row strips (full GEMM, fast row-wise top-K)
        vals, idx = _knn_candidates_by_strips(s, min(n, k + 1 + _MARGIN_BF16), chunk_elems)
    else:
        vals, idx = _knn_candidates_half_sweep(s, min(n, k + 1 + _MARGIN), chunk_elems)
    radii, certified = _radii_from_candidates(s, vals, idx, k)
    bad = (~certified).nonzero(as_tuple=True)[0]
    if bad.numel():
        radii[bad] = _radii_full_rows(s, bad, k, chunk_elems)
    return radii


def _knn_candidates_by_strips(s: _Centred, kk: int, chunk_elems: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``kk`` smallest approximate squared distances (self pinned first), ascending."""
    n = s.x.shape[0]
    vals = torch.empty((n, kk), dtype=s.norms_a.dtype, device=s.a.device)
    idx = torch.empty((n, kk), dtype=torch.int64, device=s.a.device)
    step = _chunk_rows(n, chunk_elems)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        d2, _ = _gemm_sq_dists(s.a[r0:r1], s.norms_a[r0:r1], s.a, s.norms_a)
        d2.diagonal(offset=r0).fill_(-math.inf)  # self is the nearest (distance 0): pin it
        torch.topk(d2, kk, dim=1, largest=False, sorted=True, out=(vals[r0:r1], idx[r0:r1]))
        del d2
    return vals, idx


def _knn_candidates_half_sweep(s: _Centred, kk: int, chunk_elems: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same as ``_knn_candidates_by_strips`` from the upper triangle only (half the GEMM work)."""
    n = s.x.shape[0]
    vals = torch.full((n, kk), math.inf, dtype=s.norms_a.dtype, device=s.a.device)
    idx = torch.zeros((n, kk), dtype=torch.int64, device=s.a.device)
    # square blocks: diagonal blocks are computed whole, so keep them a small share of the work
    b = max(1, min(math.isqrt(chunk_elems), max(512, -(-n // 8))))
    for r0 in range(0, n, b):
        r1 = min(n, r0 + b)
        for c0 in range(r0, n, b):
            c1 = min(n, c0 + b)
            d2, _ = _gemm_sq_dists(s.a[r0:r1], s.norms_a[r0:r1], s.a[c0:c1], s.norms_a[c0:c1])
            if c0 == r0:
                d2.diagonal().fill_(-math.inf)  # self is the nearest (distance 0): pin it
            _merge_topk(vals, idx, r0, r1, d2, c0)
            if c0 != r0:
                _merge_topk(vals, idx, c0, c1, d2.T, r0)
            del d2
    return vals, idx


def compute_knn_sq_radii(feats: Any, k: int = 5, *, chunk_elems: int = _CHUNK_ELEMS,
                         gemm_dtype: Optional[torch.dtype] = None) -> np.ndarray:
    """Squared Euclidean distance from each sample to its k-th nearest other sample, float64.

    Precompute this once for a reference set and pass it to :func:`prdc` as ``real_sq_radii``.
    ``gemm_dtype``: as in :func:`prdc`.
    """
    k = _check_k(k)
    x = _to_tensor(feats, "feats")
    gdt = _approx_dtype(x.device, gemm_dtype)
    mean = _checked_mean(x, "feats")
    _check_count(x, k, "feats")
    return _knn_sq_radii(_centre(x, mean, gdt), k, chunk_elems).cpu().numpy()


# ----------------------------------------------------------------------------- real x fake pass
@torch.no_grad()
def _cross_pass(real: _Centred, fake: _Centred, rr2: torch.Tensor, rf2: torch.Tensor,
                chunk_elems: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per fake: how many real balls contain it. Per real: does its ball contain a fake
    (coverage), is it inside some fake ball (recall). Both sets centred on the same mean."""
    n_r, n_f = real.x.shape[0], fake.x.shape[0]
    cdt = real.norms_a.dtype
    dev = real.x.device
    r32, f32 = real.x.dtype == torch.float32, fake.x.dtype == torch.float32
    cross32 = r32 and f32  # sklearn computes the cross distances in float32 only if both are
    # radii as prdc sees them (each set's own precision)
    rr_v = _round_like_prdc(rr2, r32)
    rf_v = _round_like_prdc(rf2, f32)
    # a squared distance below lo (above hi) gives a rounded distance strictly below (not below)
    # the rounded radius whatever the rounding: 16 units of the coarser precision in between
    u = 2.0 ** -24 if (r32 or f32) else 2.0 ** -53
    cr, cf = real.cn, fake.cn
    eps_a = 4 * torch.finfo(cdt).eps  # slack for casting the float64 thresholds to ``cdt``
    in_lo = rr2 * (1 - 16 * u) - cr  # real ball i, before subtracting c|f_j|^2
    in_lo = in_lo - in_lo.abs() * eps_a
    in_hi = (rr2 * (1 + 16 * u) + cr) * (1 + eps_a)
    rec_lo = rf2 * (1 - 16 * u) - cf  # fake ball j, before subtracting c|r_i|^2
    rec_lo = rec_lo - rec_lo.abs() * eps_a
    rec_hi = (rf2 * (1 + 16 * u) + cf) * (1 + eps_a)
    in_lo, in_hi, rec_lo, rec_hi = (t.to(cdt) for t in (in_lo, in_hi, rec_lo, rec_hi))
    cr_a, cf_a = cr.to(cdt), cf.to(cdt)

    counts = torch.zeros(n_f, dtype=torch.int64, device=dev)
    covered = torch.zeros(n_r, dtype=torch.bool, device=dev)
    recalled = torch.zeros(n_r, dtype=torch.bool, device=dev)
    rows = _chunk_rows(n_f, chunk_elems)
    for s in range(0, n_r, rows):
        e = min(n_r, s + rows)
        d2, pair = _gemm_sq_dists(real.a[s:e], real.norms_a[s:e], fake.a, fake.norms_a, real.w_out)
        if pair is None:
            hi = lo = d2
        else:  # the per-pair part of the bound (bfloat16): d2 -/+ w |o|
            hi = d2.add_(pair)
            lo = torch.sub(hi, pair, alpha=2.0, out=pair)
        # fake j inside real ball i: sure when d2 + bound < lo, impossible when d2 - bound >= hi
        t = hi + cf_a[None, :]
        inside = t < in_lo[s:e, None]
        t = torch.sub(lo, cf_a[None, :], out=t)
        amb = (t < in_hi[s:e, None]) & ~inside
        # real i inside fake ball j (recall)
        t = torch.add(hi, cr_a[s:e, None], out=t)
        recall = t < rec_lo[None, :]
        t = torch.sub(lo, cr_a[s:e, None], out=t)
        amb |= (t < rec_hi[None, :]) & ~recall
        del t, d2, hi, lo, pair
        pi, pj = amb.nonzero(as_tuple=True)
        if pi.numel():
            dist = _round_like_prdc(_exact_sq_dists(real.x, fake.x, pi + s, pj), cross32)
            inside[pi, pj] = dist < rr_v[pi + s]
            recall[pi, pj] = dist < rf_v[pj]
        counts += inside.sum(0, dtype=torch.int32)  # int32 column sums: 2.4x faster than int64
        # coverage: the nearest fake is inside the ball  <=>  some fake is inside the ball
        covered[s:e] = inside.any(1)
        recalled[s:e] = recall.any(1)
    return counts, covered, recalled


def prdc(real: Any, fake: Any, k: int = 5, *, real_sq_radii: Any = None,
         chunk_elems: int = _CHUNK_ELEMS, gemm_dtype: Optional[torch.dtype] = None) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` against ``real`` with k-NN balls.

    ``real``/``fake``: (n, d) numpy arrays or torch tensors (CPU or CUDA). ``real_sq_radii``:
    optional output of :func:`compute_knn_sq_radii` for ``real`` with the same ``k`` (saves a
    pass when the reference set is fixed). ``gemm_dtype``: dtype of the approximate pass
    (``torch.bfloat16``, ``float32`` or ``float64``; None picks the fastest safe one); it changes
    the speed, never the result. Memory: the inputs, one mean-centred copy of each in the GEMM
    dtype, and about ``chunk_elems`` * 14 bytes of work space.
    """
    k = _check_k(k)
    r = _to_tensor(real, "real")
    f = _to_tensor(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"real and fake features have different widths: {r.shape[1]} vs {f.shape[1]}")
    mean_r = _checked_mean(r, "real")
    mean_f = _checked_mean(f, "fake")
    _check_count(r, k, "real")
    _check_count(f, k, "fake")
    if f.device != r.device:
        f = f.to(r.device)
        mean_f = mean_f.to(r.device)
    gdt = _approx_dtype(r.device, gemm_dtype)
    # each set's radii in its own centring (tightest bounds); then both centred on the real mean
    rf2 = _knn_sq_radii(_centre(f, mean_f, gdt), k, chunk_elems)
    rc = _centre(r, mean_r, gdt)
    if real_sq_radii is None:
        rr2 = _knn_sq_radii(rc, k, chunk_elems)
    else:
        rr2 = torch.as_tensor(np.asarray(real_sq_radii, dtype=np.float64), device=r.device)
        if rr2.shape != (r.shape[0],):
            raise ValueError(f"real_sq_radii must have shape ({r.shape[0]},), got {tuple(rr2.shape)}")
    counts, covered, recalled = _cross_pass(rc, _centre(f, mean_r, gdt), rr2, rf2, chunk_elems)
    n_f = f.shape[0]
    total = int(counts.sum())
    return dict(
        precision=float(int((counts > 0).sum()) / n_f),
        recall=float(int(recalled.sum()) / r.shape[0]),
        # same operation order as prdc: (1/k) * mean of counts
        density=float((1.0 / float(k)) * (total / n_f)),
        coverage=float(int(covered.sum()) / r.shape[0]),
    )
