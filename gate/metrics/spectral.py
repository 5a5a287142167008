"""Per-layer metrics from a layer's pooled eigenvalues, named as WeightWatcher 0.7.7 names them.

Eigenvalues are lambda_i = sigma_i(W)^2 with no 1/N factor. Norm metrics are
log10 sums over the ESD; alpha comes from :mod:`gate.solver.powerlaw_fit`. The conventions, and
the papers behind them, are in docs/metrics.md.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import numpy as np
import torch

from gate.solver.powerlaw_fit import fit_power_law
from gate.vocabulary import LayerStatus

if TYPE_CHECKING:
    import pandas as pd

OVER_TRAINED_ALPHA = 2.0
UNDER_TRAINED_ALPHA = 6.0
WEAK_RANK_TOLERANCE = 1e-6  # WeightWatcher's absolute eigenvalue tolerance for weak_rank_loss
_ENTROPY_EPSILON = 1e-10


def rank_threshold(lambda_max: float, N: int) -> float:
    """Eigenvalues at or below this count as zero for the numerical rank.

    numpy's matrix_rank uses sigma > sigma_max * N * eps on singular values. Eigenvalues of a
    float64 Gram matrix carry absolute errors of order eps * lambda_max, so the same rule is applied
    on the eigenvalue scale: lambda > lambda_max * N * eps (singular values above
    sigma_max * sqrt(N * eps), about 1e-6 relative for N = 4096).
    """
    return lambda_max * N * np.finfo(np.float64).eps


def spectral_metrics(evals: np.ndarray, N: int, device: torch.device | str = "cpu",
                     error_bound: float = 0.0) -> dict[str, float | int | str]:
    """All ESD-derived metrics of one layer; alpha-based ones are NaN when no fit is possible.

    ``error_bound`` (absolute, from the solve) also counts as zero: an eigenvalue the solve cannot
    tell from zero does not add to the rank. It matters only for float32 solves; a float64 bound
    lies below :func:`rank_threshold` for all but tiny matrices.
    """
    evals = np.sort(np.asarray(evals, dtype=np.float64))
    lambda_max = float(evals[-1])
    norm = float(evals.sum())
    threshold = max(rank_threshold(lambda_max, N), error_bound)
    rank = int(np.count_nonzero(evals > threshold))
    metrics: dict[str, float | int | str] = {
        "num_evals": int(evals.size),
        "lambda_max": lambda_max,
        "spectral_norm": lambda_max,
        "norm": norm,
        "log_norm": _log10(norm),
        "log_spectral_norm": _log10(lambda_max),
        "stable_rank": norm / lambda_max if lambda_max > 0 else math.nan,
        "matrix_rank": rank,
        "rank_loss": int(evals.size - rank),
        "near_zero_fraction": float(np.count_nonzero(evals <= threshold)) / evals.size,
        "weak_rank_loss": int(np.count_nonzero(evals < WEAK_RANK_TOLERANCE)),
        "sv_max": math.sqrt(lambda_max),
        "sv_min": math.sqrt(float(evals[0])),
        "entropy": _matrix_entropy(evals, rank),
    }
    fit = fit_power_law(evals, device)
    if fit is None:
        metrics.update(alpha=math.nan, xmin=math.nan, xmax=lambda_max, D=math.nan, sigma=math.nan,
                       num_pl_spikes=0, alpha_weighted=math.nan, log_alpha_norm=math.nan, warning="")
        return metrics
    metrics.update(
        alpha=fit.alpha,
        xmin=fit.xmin,
        xmax=fit.xmax,
        D=fit.D,
        sigma=fit.sigma,
        num_pl_spikes=fit.num_pl_spikes,
        alpha_weighted=fit.alpha * _log10(lambda_max),
        log_alpha_norm=_log_alpha_norm(evals, fit.alpha),
        warning=training_warning(fit.alpha),
    )
    return metrics


def training_warning(alpha: float) -> str:
    """WeightWatcher's per-layer warning: alpha < 2 over-trained, alpha > 6 under-trained."""
    if alpha < OVER_TRAINED_ALPHA:
        return "over-trained"
    if alpha > UNDER_TRAINED_ALPHA:
        return "under-trained"
    return ""


def _log10(value: float) -> float:
    return math.log10(value) if value > 0 else -math.inf


def _log_alpha_norm(evals: np.ndarray, alpha: float) -> float:
    """log10(sum lambda^alpha), summed in log space so large alpha * log(lambda) cannot overflow."""
    positive = evals[evals > 0]
    log_terms = alpha * np.log(positive)
    peak = log_terms.max()
    return float((peak + math.log(np.exp(log_terms - peak).sum())) / math.log(10))


def _matrix_entropy(evals: np.ndarray, rank: int) -> float:
    """WeightWatcher's normalised spectral entropy: -sum p log p / log(rank), p = lambda / sum lambda."""
    total = evals.sum()
    if total <= 0 or rank < 1:
        return math.nan
    p = evals / total + _ENTROPY_EPSILON
    return float(-(p * np.log(p)).sum() / math.log(rank + _ENTROPY_EPSILON))


def add_peer_ratios(layers: "pd.DataFrame") -> None:
    """Each analysed layer's stable rank and lambda_max over the median of its peers, so that one
    collapsed layer stands out without a baseline version (Martin, Peng & Mahoney, docs/metrics.md: a poorly
    trained model shows anomalously small spectral norms). Peers share the layer type, N x M and
    the role: the name with its block and expert indices replaced (``layers.#.self_attn.k_proj``),
    so a k_proj is judged among k_projs, not among q/v/o projections of the same shape whose
    stable ranks differ by design, nor an output head among embeddings. A layer without peers gets
    1.0: there is nothing to compare it with."""
    if layers.empty or "stable_rank" not in layers.columns:
        return
    analysed = layers["status"] == LayerStatus.OK
    groups = layers.loc[analysed, "layer_type"] + ":" + layers.loc[analysed, "N"].astype(str) + "x" + \
        layers.loc[analysed, "M"].astype(str) + ":" + layers.loc[analysed, "name"].map(_role)
    for metric, column in (("stable_rank", "stable_rank_peer_ratio"), ("lambda_max", "spectral_norm_peer_ratio")):
        values = layers.loc[analysed, metric]
        layers.loc[analysed, column] = values / values.groupby(groups).transform("median")


def _role(name: str) -> str:
    """A layer's name with its numeric path components (block, expert, Sequential position) and
    torch RNN layer suffixes (``weight_hh_l1``) as #."""
    return re.sub(r"_l\d+(?=\.|$)", "_l#", re.sub(r"(^|\.)\d+(?=\.|$)", r"\1#", name))
