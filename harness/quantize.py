"""How one weight matrix becomes small integers for the artifact: per-row scales, three ways to choose the clip.

Every row r of a matrix W is stored as integers q in [−qmax, qmax] (qmax = 2^(bits−1) − 1: 31 for int6, 15 for
int5, 127 for int8, each in an int8 container) and one fp16 scale s_r, and comes back as q·s_r. The integers are
rounded against the fp16 scale the artifact stores, so the only errors are rounding and clipping. As in the
challenge's int8 export (harness/artifact.py) and the int6/int5 records after it, the scale has a floor of
1/qmax: a row whose largest weight is below 1 gets a coarser grid than its own range (a row of 0.1s keeps 3 of
int6's 31 levels a side). The records' byte counts and their QAT depend on it, so it is kept here too.

The clip c_r (s_r = c_r / qmax) is chosen in one of three ways:
- plain: the row's absolute maximum, nothing clipped;
- search: each of CLIP_FRACTIONS × the row's absmax, keeping per row the one with the least squared error,
  optionally weighted per column (a Hessian diagonal). Fraction 1.0 is a candidate, so the search never does
  worse than plain. This is the "GPTQ-lite" of parameter-golf's 2026-03-22 record, which searched 5
  percentiles per matrix; here per row and in fractions of the absmax, vectorised over rows;
- GPTQ (Frantar et al. 2023, arXiv 2210.17323; the challenge's 2026-03-29 record): with H = XᵀX of the inputs
  that multiply W, the columns are rounded one at a time (largest H diagonal first) and each rounding error is
  fed forward into the columns not yet rounded, through the upper Cholesky factor of H⁻¹, in blocks of
  GPTQ_BLOCK columns, so that ‖(W − Ŵ)X‖ rather than ‖W − Ŵ‖ is kept small. Rows are independent in GPTQ, so
  every clip candidate runs at once as stacked copies of the matrix, and each row keeps the candidate whose
  accumulated GPTQ cost (Σ_j e_j², the increase of the damped quadratic objective) is least. H is damped by
  GPTQ_DAMP × its mean diagonal (×10 up to three times more if Cholesky still fails); a Hessian that is not
  finite, all zero or never factors falls back to the search weighted by its diagonal, or unweighted.
The 2026-04-05 record's alternative, a clip fixed at k standard deviations of the row (chosen for compressed
size rather than error), is not used: the schemes here choose clips for error, as the brief for them asks.
"""

from __future__ import annotations

import torch
from torch import Tensor

CLIP_FRACTIONS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6)  # of each row's absmax; 1.0 first: ties keep it
MAX_SCALE = 65504.0    # the largest fp16 number
GPTQ_BLOCK = 128       # columns rounded before their errors are passed to the rest in one matmul
GPTQ_DAMP = 0.01       # of H's mean diagonal, added to its diagonal before it is inverted


def qmax_of(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def row_scales(absmax: Tensor, qmax: int, fraction: float = 1.0) -> Tensor:
    """fp16 per-row scales that clip each row at `fraction` of its absmax."""
    return (absmax * fraction / qmax).clamp(1.0 / qmax, MAX_SCALE).to(torch.float16)


def round_rows(w: Tensor, scales: Tensor, qmax: int) -> Tensor:
    """fp32 rows rounded against their (fp16) scales: int8 codes in [−qmax, qmax]."""
    return torch.clamp(torch.round(w / scales.float()[:, None]), -qmax, qmax).to(torch.int8)


def plain(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Codes and scales clipping each row of fp32 `w` at its absmax."""
    qmax = qmax_of(bits)
    scales = row_scales(w.abs().amax(dim=1), qmax)
    return round_rows(w, scales, qmax), scales


def search(w: Tensor, bits: int, column_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Codes and scales with each row's clip chosen from CLIP_FRACTIONS for the least Σ_j weight_j·(w − ŵ)²."""
    qmax, absmax = qmax_of(bits), w.abs().amax(dim=1)
    best_q = best_s = best_err = None
    for fraction in CLIP_FRACTIONS:
        s = row_scales(absmax, qmax, fraction)
        q = round_rows(w, s, qmax)
        sq_err = (w - q.float() * s.float()[:, None]).square()
        err = (sq_err * column_weight).sum(dim=1) if column_weight is not None else sq_err.sum(dim=1)
        if best_err is None:
            best_q, best_s, best_err = q, s, err
            continue
        better = err < best_err
        best_q = torch.where(better[:, None], q, best_q)
        best_s, best_err = torch.where(better, s, best_s), torch.minimum(err, best_err)
    return best_q, best_s


def gptq(w: Tensor, hessian: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Codes and scales by GPTQ against H = XᵀX (in_features × in_features), the clip searched per row; a
    1-D `hessian` is taken as H's diagonal and weights the clip search instead (module docstring)."""
    h = hessian.to(device=w.device, dtype=torch.float64)
    if h.ndim == 1 or not torch.isfinite(h).all() or not (h.diagonal() > 0).any():
        diagonal = h if h.ndim == 1 else h.diagonal()
        usable = bool(torch.isfinite(diagonal).all() and (diagonal > 0).any())
        return search(w, bits, diagonal.float() if usable else None)
    h = h.clone()
    dead = h.diagonal() <= 0
    h[dead, dead] = 1.0  # an input never seen in calibration: its H row is zero, so its column is rounded alone
    order = torch.argsort(h.diagonal(), descending=True)  # "act order": the most used inputs first
    upper = _inverse_cholesky(h[order][:, order])
    if upper is None:
        return search(w, bits, h.diagonal().float())
    qmax, rows, count = qmax_of(bits), w.shape[0], len(CLIP_FRACTIONS)
    absmax = w.abs().amax(dim=1)
    scales = torch.cat([row_scales(absmax, qmax, f) for f in CLIP_FRACTIONS])  # candidate c of row r at c·rows + r
    codes, cost = _gptq_columns(w[:, order].repeat(count, 1), upper, scales.float(), qmax)
    pick = cost.view(count, rows).argmin(dim=0) * rows + torch.arange(rows, device=w.device)
    return codes[pick][:, torch.argsort(order)].contiguous(), scales[pick]


def _inverse_cholesky(h: Tensor) -> Tensor | None:
    """The upper Cholesky factor of (H + λI)⁻¹ in fp32, λ from GPTQ_DAMP, raised ×10 while H will not factor."""
    damp = GPTQ_DAMP * float(h.diagonal().mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for _ in range(4):
        lower, info = torch.linalg.cholesky_ex(h + damp * eye)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0 and torch.isfinite(upper).all():
                return upper.float()
        damp *= 10
    return None


def _gptq_columns(w: Tensor, upper: Tensor, scales: Tensor, qmax: int) -> tuple[Tensor, Tensor]:
    """GPTQ's column loop over fp32 `w`, vectorised over rows: the codes, and each row's cost. It works on Wᵀ, so
    that a column of W, the unit of the loop, is contiguous."""
    cols, rows = w.shape[1], w.shape[0]
    work = w.t().contiguous()
    codes = torch.empty(cols, rows, dtype=torch.int8, device=w.device)
    cost = w.new_zeros(rows)
    for start in range(0, cols, GPTQ_BLOCK):
        end = min(start + GPTQ_BLOCK, cols)
        block, diag = work[start:end], upper[start:end, start:end]
        errors = torch.empty_like(block)
        for j in range(end - start):
            q = torch.clamp(torch.round(block[j] / scales), -qmax, qmax)
            codes[start + j] = q.to(torch.int8)
            errors[j] = (block[j] - q * scales) / diag[j, j]
            block[j + 1:] -= diag[j, j + 1:, None] * errors[j]
        cost += errors.square().sum(dim=0)
        work[end:] -= upper[start:end, end:].t() @ errors
    return codes.t(), cost
