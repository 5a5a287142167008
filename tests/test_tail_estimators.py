"""Optional tail estimators (gate.metrics.tail_estimators) on synthetic data with known tail exponents."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gate
from gate.metrics.tail_estimators import alpha_farms, alpha_hill, farms_eigenvalues, farms_windows
from gate.solver.powerlaw_fit import fit_power_law


@pytest.mark.parametrize("alpha", [2.5, 4.0])
def test_hill_recovers_the_exponent_of_pareto_eigenvalues(alpha):
    """Eigenvalues drawn from p(x) ~ x^-alpha (x >= 1): the tail above the median is the same law,
    so the Hill estimate is alpha within its standard error (alpha - 1) / sqrt(k), k = 10000."""
    values = np.random.default_rng(1).pareto(alpha - 1, 20000) + 1
    assert alpha_hill(values) == pytest.approx(alpha, abs=4 * (alpha - 1) / math.sqrt(10000))


def test_hill_by_hand_and_degenerate_inputs():
    values = np.array([1.0, 2.0, 4.0, 8.0, 16.0])  # xmin = 4 (index 5 // 2): tail 4, 8, 16
    assert alpha_hill(values) == pytest.approx(1 + 3 / (math.log(1) + math.log(2) + math.log(4)))
    assert math.isnan(alpha_hill(np.ones(10)))
    assert math.isnan(alpha_hill(np.array([1e-9, 1.0])))


def test_farms_windows_cover_the_long_side_with_half_overlap():
    assert farms_windows(1000, 250) == [0, 125, 250, 375, 500, 625, 750]
    assert farms_windows(1100, 250)[-1] == 850  # last block flush with the end
    assert farms_windows(300, 300) == [0]


@pytest.mark.slow  # tens of seconds on 2 cores: make test runs it, make test-fast does not
@pytest.mark.parametrize("shape", [(1000, 1000), (4000, 250)])
def test_farms_recovers_the_exponent_of_very_heavy_tailed_weights(shape):
    """Entries with tail index mu = 1 (Student t, 1 dof): Martin & Mahoney (JMLR 2021, Table 1)
    give an ESD tail exponent alpha = 1 + mu / 2 = 1.5 for mu < 2, whatever the aspect ratio."""
    W = torch.from_numpy(np.random.default_rng(0).standard_t(1.0, size=shape))
    assert alpha_farms([W]) == pytest.approx(1.5, abs=0.1)


def test_farms_of_a_square_matrix_is_the_plain_fit():
    W = torch.from_numpy(np.random.default_rng(3).standard_t(2.0, size=(300, 300)))
    evals = np.sort(np.linalg.svd(W.numpy(), compute_uv=False) ** 2)
    np.testing.assert_allclose(farms_eigenvalues([W]), evals, rtol=1e-9, atol=1e-9 * evals.max())
    assert alpha_farms([W]) == pytest.approx(fit_power_law(evals).alpha, abs=1e-9)


def test_scan_reports_them_only_when_asked(small_net):
    plain = gate.scan(small_net, device="cpu").layers
    assert "alpha_hill" not in plain.columns and "alpha_farms" not in plain.columns
    layers = gate.scan(small_net, device="cpu", tail_estimators=True, keep_spectra=True)
    analysed = layers.layers[layers.layers["status"] == "ok"].set_index("name")
    for name in analysed.index:
        assert analysed.loc[name, "alpha_hill"] == pytest.approx(alpha_hill(layers.spectra[name]), rel=1e-12)
    fc1 = small_net.fc1.weight.detach()  # 64 x 24: blocks of 24 x 24
    assert analysed.loc["fc1", "alpha_farms"] == pytest.approx(alpha_farms([fc1]), rel=1e-9)
