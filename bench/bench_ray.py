"""Ray scans on 1 and 2 local nodes against the single-process scan, on a Llama-shaped checkpoint.

Starts real Ray clusters on loopback (deploy.local.ray_cluster: one CPU per node), scans the
same sharded checkpoint on each after one warm-up scan (worker processes start and import torch
then), checks that the results equal the single-process scan, and prints the wall times and the
measured cost per matrix. On a 2-core machine two nodes cannot be faster than one process that
already uses both cores: the figures show the overhead of distribution, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_checkpoint import generate  # noqa: E402

from deploy.local.ray_cluster import local_ray_cluster  # noqa: E402
from gate.distributed.executor import scan_on_ray  # noqa: E402
from gate.scanning.pipeline import scan  # noqa: E402

TIMING = ("scan_seconds", "eigensolve_seconds")


def same(a, b) -> bool:
    strip = lambda summary: {k: v for k, v in summary.items() if k not in TIMING}  # noqa: E731
    return a.layers.equals(b.layers) and strip(a.summary) == strip(b.summary) and a.weights_sha256 == b.weights_sha256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--ffn", type=int, default=2752)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="wg-bench-ray-"))
    try:
        index = generate(workdir / "ckpt", args.blocks, args.hidden, args.ffn, args.vocab)
        runs = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            single = scan(str(index), device="cpu")
            runs.append(time.perf_counter() - started)
        matrices = int(single.summary["num_analysed"])
        report = {"checkpoint": {"blocks": args.blocks, "hidden": args.hidden, "ffn": args.ffn, "vocab": args.vocab,
                                 "matrices": matrices},
                  "single_process_s": statistics.median(runs),
                  "single_process_eigensolve_s": single.summary["eigensolve_seconds"],
                  "per_matrix_s": statistics.median(runs) / matrices}
        for nodes in (1, 2):
            with local_ray_cluster(workdir / f"c{nodes}", nodes=nodes, cpus_per_node=1) as address:
                scan_on_ray(str(index), address=address, device="cpu")  # warm-up: worker processes start
                times = []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    result = scan_on_ray(str(index), address=address, device="cpu")
                    times.append(time.perf_counter() - started)
                    assert same(result, single), "the Ray scan differs from the single-process scan"
                import ray

                ray.shutdown()
            report[f"ray_{nodes}_node_s"] = statistics.median(times)
            report[f"ray_{nodes}_node_eigensolve_s"] = result.summary["eigensolve_seconds"]
        print(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
