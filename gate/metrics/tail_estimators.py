"""Tail estimators from the LLM-era literature, reported as optional metrics (``tail_estimators=True``).

Neither is used by the default policy: published work uses them to allocate budgets *within* a
model (learning rates, pruning ratios), and no one has validated absolute thresholds for them.

- ``alpha_hill``: the Hill estimator with its cut-off fixed at the median eigenvalue, as TempBalance
  (Zhou et al., NeurIPS 2023, "Temperature Balancing, Layer-wise Weight Analysis, and Neural
  Network Training", its ``xmin_mid`` / ``median`` fitting) and AlphaPruning (Lu et al., NeurIPS
  2024, ``alpha_mid``) use it: with the ESD sorted ascending, xmin = lambda_[n/2] and
  alpha = 1 + k / sum_{lambda_i >= xmin} ln(lambda_i / xmin), k the number of eigenvalues >= xmin.
  It is the same continuous MLE as WeightWatcher's alpha, without the KS search over xmin: cheaper
  and never lands on a spurious short tail, but biased when the power law holds only far out.
- ``alpha_farms``: FARMS, Fixed-Aspect-Ratio Matrix Subsampling (Hu et al., ICML 2025,
  arXiv 2506.06280). The ESD of an N x M matrix depends on its aspect ratio M/N even for random
  weights (the Marchenko-Pastur law), which biases alpha between layers of different shapes. FARMS
  takes submatrices of one fixed aspect ratio, here square blocks of the short side M (M x M),
  slid along the long side with 50% overlap (the last window ends at the last row), pools the
  eigenvalues of all blocks into one ESD and fits it as WeightWatcher fits alpha (gate.solver.powerlaw_fit).
  A square matrix is its own single block, so alpha_farms equals alpha there (up to the pooled
  eigenvalue scale). Block size and overlap are our reading of the paper's default; the paper
  also studies other ratios.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gate.solver.powerlaw_fit import EVALS_THRESH, fit_power_law

FARMS_OVERLAP = 0.5  # fraction of a block shared with the next one along the long side


def alpha_hill(evals: np.ndarray) -> float:
    """Hill estimator with xmin at the median eigenvalue (TempBalance / AlphaPruning); NaN when
    fewer than 2 eigenvalues exceed ``EVALS_THRESH`` or the tail above xmin is flat."""
    data = np.sort(np.asarray(evals, dtype=np.float64))
    data = data[data > EVALS_THRESH]
    if data.size < 2:
        return math.nan
    xmin = data[data.size // 2]
    tail = data[data.size // 2:]
    log_sum = float(np.log(tail / xmin).sum())
    return 1.0 + tail.size / log_sum if log_sum > 0 else math.nan


def farms_windows(N: int, M: int, overlap: float = FARMS_OVERLAP) -> list[int]:
    """Start rows of the M x M blocks along the long side N (N >= M): step M*(1-overlap), and one
    last block flush with the end so that every row is covered."""
    step = max(1, int(M * (1 - overlap)))
    starts = list(range(0, N - M + 1, step))
    if starts[-1] != N - M:
        starts.append(N - M)
    return starts


def farms_eigenvalues(matrices: list[torch.Tensor], scale: float = 1.0) -> np.ndarray:
    """Pooled eigenvalues of the M x M blocks of every matrix (each N x M, N >= M), in float64."""
    parts = []
    for matrix in matrices:
        N, M = matrix.shape
        blocks = torch.stack([matrix[start:start + M] for start in farms_windows(N, M)]).to(torch.float64)
        grams = blocks.transpose(1, 2) @ blocks
        parts.append(torch.linalg.eigvalsh(grams).reshape(-1).cpu().numpy())
    return np.clip(np.sort(np.concatenate(parts)), 0, None) * scale**2


def alpha_farms(matrices: list[torch.Tensor], scale: float = 1.0) -> float:
    """FARMS alpha of one layer (its matrices' blocks pooled into one ESD); NaN when no fit exists."""
    fit = fit_power_law(farms_eigenvalues(matrices, scale))
    return fit.alpha if fit is not None else math.nan
