"""A verdict on each layer's power-law fit, so alpha rules judge only alphas that mean something.

The fit (gate.solver.powerlaw_fit) always returns an alpha, even for an ESD with no power-law tail: a
random-init layer, a tail of five eigenvalues, or a tail better described by a lognormal. Rules that
read alpha must know which alphas to believe (WeightWatcher's users report "spurious alphas from bad
fits"). A fit is ``poor`` when any of these holds, and the reason names the first one found:

- the tail is short: fewer than ``MIN_TAIL`` eigenvalues at or above xmin;
- the KS distance D exceeds the 5% critical value 1.36 / sqrt(n_tail) of the one-sample KS test
  (lenient: xmin was chosen to minimise D, which biases D low);
- xmin sits at the bottom edge of the spectrum: the "tail" is the whole ESD;
- a lognormal or a truncated power law fits the tail significantly better (normalised
  log-likelihood ratio R < 0 with p < ``LR_P``; Clauset, Shalizi & Newman's test, computed by the
  ``powerlaw`` package with alpha allowed up to 100, since powerlaw 2.0 caps it at 3 by default).

The likelihood-ratio test needs ``powerlaw``; where it is not installed (the GPU machine), the
verdict rests on the other three criteria and ``fit_lr_available`` is False.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

MIN_TAIL = 10
KS_CRITICAL_C = 1.36  # one-sample KS critical value at the 5% level, times sqrt(n)
LR_P = 0.05
EDGE_SHARE = 0.95  # a tail holding this share of the positive eigenvalues is the whole ESD
_ALTERNATIVES = ("lognormal", "truncated_power_law")


def fit_quality(evals: np.ndarray, alpha: float, xmin: float, D: float, num_pl_spikes: int,
                likelihood_ratio: bool = True) -> dict[str, Any]:
    """``fit_quality`` (good / poor / none), ``fit_reason``, ``fit_ks_critical`` and the likelihood
    ratios (``fit_lr_lognormal``, ``fit_p_lognormal``, ``fit_lr_truncated``, ``fit_p_truncated``).

    ``likelihood_ratio=False`` skips the comparison: it costs about 0.2 s per layer (two numerical
    fits in ``powerlaw``), twice MiniLM's whole scan, so the scan leaves it to the policy step,
    which runs it only on the layers an alpha rule would count against the model."""
    row: dict[str, Any] = {"fit_quality": "none", "fit_reason": "no power-law fit", "fit_ks_critical": math.nan,
                           "fit_lr_lognormal": math.nan, "fit_p_lognormal": math.nan,
                           "fit_lr_truncated": math.nan, "fit_p_truncated": math.nan, "fit_lr_available": False}
    if not (math.isfinite(alpha) and math.isfinite(xmin) and num_pl_spikes > 0):
        return row
    evals = np.asarray(evals, dtype=np.float64)
    tail = evals[evals >= xmin]
    n = int(tail.size)
    critical = KS_CRITICAL_C / math.sqrt(n)
    row["fit_ks_critical"] = critical
    positive = int(np.count_nonzero(evals > 1e-5))
    reasons = []
    if n < MIN_TAIL:
        reasons.append(f"tail of {n} eigenvalues (fewer than {MIN_TAIL})")
    if D > critical:
        reasons.append(f"KS distance {D:.3f} above the 5% critical value {critical:.3f} for {n} tail eigenvalues")
    if n >= EDGE_SHARE * positive:
        reasons.append(f"xmin at the spectrum's lower edge: the tail holds {n} of {positive} eigenvalues")
    if n >= MIN_TAIL and likelihood_ratio:
        comparison = likelihood_ratios(tail, xmin)
        if comparison is not None:
            row.update(comparison, fit_lr_available=True)
            for name, key in (("lognormal", "lognormal"), ("truncated power law", "truncated")):
                ratio, p = comparison[f"fit_lr_{key}"], comparison[f"fit_p_{key}"]
                if ratio < 0 and p < LR_P:
                    reasons.append(f"a {name} fits the tail better (R = {ratio:.2f}, p = {p:.3f})")
    row["fit_quality"] = "poor" if reasons else "good"
    row["fit_reason"] = "; ".join(reasons)
    return row


def likelihood_ratios(tail: np.ndarray, xmin: float) -> dict[str, float] | None:
    """Normalised log-likelihood ratios R (power law vs each alternative; R > 0 favours the power
    law) and their p-values, from ``powerlaw``; None where the package is not installed."""
    try:
        import powerlaw  # imported here: optional on scan-only machines, and slow to import
    except ImportError:
        return None
    out: dict[str, float] = {}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # powerlaw warns on every fit near a parameter bound
        fit = powerlaw.Fit(tail, xmin=xmin, verbose=False,
                           parameter_ranges={"alpha": [1.0, 100.0]})
        for alternative, key in zip(_ALTERNATIVES, ("lognormal", "truncated")):
            ratio, p = fit.distribution_compare("power_law", alternative, normalized_ratio=True)
            out[f"fit_lr_{key}"], out[f"fit_p_{key}"] = float(ratio), float(p)
    return out
