"""The Marchenko-Pastur random-like test and the power-law fit verdict, against independent references
(scipy quadrature of the MP density, numpy eigenvalues, samples drawn from known laws)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

import gate
from gate.metrics.fit_quality import fit_quality
from gate.metrics.random_like import RANDOM_MIN_EVALS, mp_cdf, mp_statistics, random_like_statistics
from gate.solver.powerlaw_fit import fit_power_law


@pytest.mark.parametrize("N, M", [(300, 300), (1000, 100), (64, 10)])
def test_mp_cdf_matches_quadrature_of_the_density(N, M):
    sigma2 = 0.37
    a, b = sigma2 * (math.sqrt(N) - math.sqrt(M)) ** 2, sigma2 * (math.sqrt(N) + math.sqrt(M)) ** 2

    def density(x: float) -> float:
        return math.sqrt(max((b - x) * (x - a), 0.0)) / (2 * math.pi * (M / N) * N * sigma2 * x)

    points = a + (b - a) * np.array([0.05, 0.3, 0.5, 0.8, 0.97])
    reference = [integrate.quad(density, a, x, limit=200)[0] for x in points]
    assert mp_cdf(points, N, M, sigma2) == pytest.approx(reference, abs=1e-3)


def test_gaussian_matrix_is_random_like_and_a_spiked_one_is_not():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((600, 200)) * 0.05
    evals = np.linalg.eigvalsh(W.T @ W)
    random = random_like_statistics(evals, 600, 200)
    assert random["random_like"] == 1.0 and random["mp_ks"] < 0.05 and random["mp_spikes"] == 0
    # the MP edge of i.i.d. entries with the matrix's own variance
    assert random["mp_edge"] == pytest.approx((W**2).mean() * (math.sqrt(600) + math.sqrt(200)) ** 2)
    u, v = rng.standard_normal((600, 8)), rng.standard_normal((8, 200))
    spiked = W + u @ v * 0.05  # eight strong directions, as training leaves
    evals = np.linalg.eigvalsh(spiked.T @ spiked)
    trained = random_like_statistics(evals, 600, 200)
    assert trained["random_like"] == 0.0 and trained["mp_spikes"] == 8 and trained["mp_spike_mass"] > 0.5


def test_too_few_eigenvalues_give_no_random_like_verdict():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((64, 10))
    stats = random_like_statistics(np.linalg.eigvalsh(W.T @ W), 64, 10)
    assert all(math.isnan(stats[key]) for key in ("random_like", "mp_ks", "mp_spikes", "mp_spike_mass"))
    assert "10 eigenvalues" in stats["random_like_reason"] and str(RANDOM_MIN_EVALS) in stats["random_like_reason"]
    # the same verdict as a plain comparison: too few for the gate, whatever the statistic says
    assert 10 < RANDOM_MIN_EVALS


def test_pooled_vectors_have_no_spectrum_to_judge():
    """A Conv1d with one input channel [C, 1, k]: each kernel position is a C x 1 column whose one
    eigenvalue is its squared norm (numpy), so k pooled positions are k squared norms, not an ESD."""
    rng = np.random.default_rng(4)
    kernel = rng.standard_normal((128, 1, 40))
    norms = np.sort((kernel[:, 0, :] ** 2).sum(axis=0))
    stats = random_like_statistics(norms, 128, 1, rf=40)
    assert math.isnan(stats["random_like"]) and math.isnan(stats["mp_ks"])
    assert "each of the 40 slices is a 128x1 vector" in stats["random_like_reason"]
    assert mp_statistics(norms, 128, 1)["mp_ks"] >= 0  # the ungated statistic exists; no verdict is drawn from it
    layers = gate.scan({"front.weight": torch.from_numpy(kernel).float(),
                        "body.weight": torch.randn(128, 128, 40, generator=torch.Generator().manual_seed(4))},
                       device="cpu").layers.set_index("name")
    assert layers.loc["front", "layer_type"] == "conv1d" and math.isnan(layers.loc["front", "random_like"])
    assert layers.loc["front", "random_like_reason"] == stats["random_like_reason"]
    assert layers.loc["body", "random_like"] == 1.0 and layers.loc["body", "random_like_reason"] == ""


def test_fit_verdicts_on_samples_from_known_laws():
    rng = np.random.default_rng(2)
    pareto = np.sort((1 - rng.random(400)) ** (-1 / 2.5))  # continuous power law, alpha = 3.5, xmin = 1
    fit = fit_power_law(pareto, "cpu")
    good = fit_quality(pareto, fit.alpha, fit.xmin, fit.D, fit.num_pl_spikes)
    assert good["fit_quality"] == "good", good["fit_reason"]
    assert good["fit_lr_available"] and not (good["fit_lr_lognormal"] < 0 and good["fit_p_lognormal"] < 0.05)
    short = fit_quality(pareto[-6:], fit.alpha, pareto[-6], 0.1, 6)
    assert short["fit_quality"] == "poor" and "tail of 6 eigenvalues" in short["fit_reason"]
    bounded = np.sort(rng.random(3000) + 1)  # no tail at all: the fit's alpha is in the hundreds
    fit = fit_power_law(bounded, "cpu")
    verdict = fit_quality(bounded, fit.alpha, fit.xmin, fit.D, fit.num_pl_spikes)
    assert verdict["fit_quality"] == "poor" and "a lognormal fits the tail better" in verdict["fit_reason"]
