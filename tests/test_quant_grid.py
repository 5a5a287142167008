"""Integer grids read from the weights (gate.metrics.quant_grid) against grids built here with numpy:
integers times scales, per tensor, per output channel and per group of inputs, and float copies that
sit on no integer grid; and the descendant's finding against a hand-computed weight error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import gate
from gate.check import check

RNG = np.random.default_rng(21)
WEIGHT = RNG.standard_normal((96, 256)) * 0.05  # [out, in]


def on_grid(bits: int, scope: str, zero_points: bool = False) -> np.ndarray:
    """WEIGHT as q * scale (+ an integer zero point per unit), q in the b-bit range, by numpy."""
    units = {"tensor": WEIGHT.reshape(1, -1), "channel": WEIGHT, "group32": WEIGHT.reshape(-1, 32)}[scope]
    if zero_points:  # asymmetric: q in [0, 2^b - 1], w = (q - z) * scale
        low, high = units.min(axis=1, keepdims=True), units.max(axis=1, keepdims=True)
        scale = (high - low) / (2 ** bits - 1)
        zero = np.round(-low / scale)
        q = np.clip(np.round(units / scale) + zero, 0, 2 ** bits - 1)
        return ((q - zero) * scale).reshape(WEIGHT.shape)
    qmax = 2 ** (bits - 1) - 1
    scale = np.abs(units).max(axis=1, keepdims=True) / qmax
    return (np.clip(np.round(units / scale), -qmax - 1, qmax) * scale).reshape(WEIGHT.shape)


def grid_of(weight: torch.Tensor) -> tuple[float, str | None]:
    row = gate.scan({"w.weight": weight}, device="cpu").layers.iloc[0]
    return row["grid_bits"], row["grid_scope"]


@pytest.mark.parametrize("bits, scope, zero_points, stored", [
    (4, "tensor", False, torch.float32), (8, "tensor", False, torch.float32),
    (4, "channel", False, torch.float32), (8, "channel", False, torch.float32), (4, "channel", True, torch.float32),
    (4, "group32", False, torch.float32), (8, "group32", False, torch.float32), (4, "group32", False, torch.float16),
    (8, "group32", False, torch.bfloat16),
])
def test_integer_grids_are_named_with_their_bits_and_scope(bits, scope, zero_points, stored):
    weight = torch.from_numpy(on_grid(bits, scope, zero_points)).to(stored)
    levels = max(np.unique(unit).size for unit in on_grid(bits, scope, zero_points).reshape(
        {"tensor": 1, "channel": 96, "group32": 768}[scope], -1))
    assert levels <= 2 ** bits  # the reference really is on a b-bit grid
    if stored == torch.bfloat16 and bits == 8:  # 8 significant bits cannot hold 255 levels times a scale
        assert grid_of(weight) == (pytest.approx(math.nan, nan_ok=True), None)
        return
    assert grid_of(weight) == (bits, scope)


@pytest.mark.parametrize("stored", [torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn])
def test_float_copies_sit_on_no_integer_grid(stored):
    """Trained-like float weights and their 16-bit and FP8 casts: no integer grid (FP8's values are
    multiples of one step, but with at most 4 significant bits: a float grid)."""
    weight = torch.from_numpy(WEIGHT).float().to(stored)
    if stored == torch.float8_e4m3fn:
        weight = weight.float()
    bits, scope = grid_of(weight)
    assert math.isnan(bits) and scope is None


def test_a_quantised_descendant_is_named_with_how_far_it_moved(tmp_path):
    """4-bit per-channel round trip of two layers: the finding names the scheme, the baseline and
    ||W_q - W|| / ||W|| over both layers (numpy, float64)."""
    second = RNG.standard_normal((128, 96)) * 0.05
    base = {"a.weight": torch.from_numpy(WEIGHT).float(), "b.weight": torch.from_numpy(second).float()}
    qmax = 7
    quantised = {name: torch.clamp(torch.round(w / (w.abs().amax(1, keepdim=True) / qmax)), -8, 7)
                 * (w.abs().amax(1, keepdim=True) / qmax) for name, w in base.items()}
    save_file(base, str(tmp_path / "base.safetensors"))
    save_file(quantised, str(tmp_path / "int4.safetensors"))
    result = check(tmp_path / "int4.safetensors", baseline=tmp_path / "base.safetensors", device="cpu")
    moved = math.sqrt(sum(float(((quantised[n].double() - base[n].double()) ** 2).sum()) for n in base)
                      / sum(float((base[n].double() ** 2).sum()) for n in base))
    assert result.decision.summary["quantisation"] == (
        f"4-bit per-channel quantisation of base.safetensors, weights moved {moved:.1%} (2 of 2 layers)")
    same = check(tmp_path / "int4.safetensors", baseline=tmp_path / "int4.safetensors", device="cpu")
    assert same.decision.summary["quantisation"] is None  # a baseline on the same grid: no change


def test_default_policy_warns_on_a_descendant_that_quantisation_moved_over_five_percent(tmp_path):
    """quantisation-error (default policy, warn): per-layer ||W_q - W|| / ||W|| computed here with
    numpy float64; 8-bit per-channel stays below 5% and passes, 4-bit per-channel moves more and
    fails, naming the scheme."""
    base = torch.from_numpy(WEIGHT).float()
    save_file({"a.weight": base}, str(tmp_path / "base.safetensors"))
    outcomes = {}
    for bits in (8, 4):
        grid = on_grid(bits, "channel")
        error = np.linalg.norm(grid - WEIGHT) / np.linalg.norm(WEIGHT)
        assert (error < 0.05) == (bits == 8)  # the reference on each side of the threshold
        save_file({"a.weight": torch.from_numpy(grid).float()}, str(tmp_path / f"int{bits}.safetensors"))
        result = check(tmp_path / f"int{bits}.safetensors", baseline=tmp_path / "base.safetensors", device="cpu")
        outcomes[bits] = next(r for r in result.decision.rules if r.rule_id == "quantisation-error")
    assert outcomes[8].status == "passed"
    assert outcomes[4].status == "failed" and outcomes[4].severity == "warn"
    assert outcomes[4].reason.startswith("4-bit per-channel quantisation of")
