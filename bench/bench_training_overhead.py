"""Overhead of gate.training's MLH measurement every epoch on the zoo's CNN (bench/zoo.py) trained
on digits as `make zoo` trains it (25 epochs, Adam, batch 64), logged to an MLflow run (sqlite).

Two figures: the time spent inside WeightMetricsTracker.step (MLH + the MLflow write) as a share of
the same run's training time, and the wall-time ratio of runs with and without the tracker
(alternated, since other jobs on the machine make single timings noisy). The goal: <= 5%.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import mlflow
import torch
from torch import nn
from zoo import CNN, EPOCHS, digits_data

from gate.training import WeightMetricsTracker


def run(track: bool, seed: int, epochs: int = EPOCHS) -> tuple[float, float]:
    """(training seconds without the tracker's share, seconds inside the tracker)."""
    x, y, _, _ = digits_data(seed)
    torch.manual_seed(seed)
    model = CNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    tracker = WeightMetricsTracker(model) if track else None
    tracked = 0.0
    started = time.perf_counter()
    for epoch in range(epochs):
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        if tracker is not None:
            before = time.perf_counter()
            tracker.step(epoch)
            tracked += time.perf_counter() - before
    return time.perf_counter() - started - tracked, tracked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="per run (the zoo trains 25)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as scratch:
        mlflow.set_tracking_uri(f"sqlite:///{scratch}/mlflow.db")
        shares, ratios = [], []
        with mlflow.start_run():
            run(True, 99, 1)  # warm-up: imports, lookup tables, the sqlite schema
            for pair in range(args.pairs):
                plain, _ = run(False, pair, args.epochs)
                trained, tracked = run(True, pair, args.epochs)
                shares.append(tracked / trained)
                ratios.append((trained + tracked) / plain)
                print(f"pair {pair}: plain {plain:.1f} s; tracked run {trained:.1f} s training + {tracked:.2f} s "
                      f"in the tracker ({shares[-1]:.2%}); wall ratio {ratios[-1]:.3f}", flush=True)
    print(f"tracker share of training time: median {statistics.median(shares):.2%} (max {max(shares):.2%}); "
          f"wall-time ratio tracked/plain: median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
