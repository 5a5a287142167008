"""Cold start of the CLI: `weightgate scan` of a tiny safetensors file and `weightgate --help`,
each in a fresh process, median of 5 (issue 17 goals on a 2-core machine: scan <= 2.5 s,
--help < 0.3 s). Writes bench/out/cold_start.json.

    python bench/bench_cold_start.py
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 5


def _command() -> list[str]:
    """The installed console script when it is on PATH next to this interpreter, else ``-m gate``."""
    script = Path(sys.executable).with_name("weightgate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gate"]


def _runs(arguments: list[str]) -> tuple[list[float], list[float]]:
    """Wall seconds and CPU seconds (user + system of the child) of each run. CPU time is the
    figure to compare on a shared, loaded machine: it does not count waiting for a core."""
    walls, cpus = [], []
    for _ in range(RUNS):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(_command() + arguments, capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
    return walls, cpus


def main() -> None:
    import torch
    from safetensors.torch import save_file

    folder = Path(tempfile.mkdtemp(prefix="weightgate-cold-"))
    try:
        path = folder / "tiny.safetensors"
        save_file({"fc1.weight": torch.randn(64, 32), "fc1.bias": torch.randn(64), "fc2.weight": torch.randn(10, 64)},
                  path)
        results = []
        for label, arguments in (("weightgate scan tiny.safetensors --format json",
                                  ["scan", str(path), "--format", "json"]),
                                 ("weightgate --help", ["--help"])):
            walls, cpus = _runs(arguments)
            results.append({"command": label, "median_wall_s": round(statistics.median(walls), 3),
                            "median_cpu_s": round(statistics.median(cpus), 3), "wall_runs_s": [round(t, 3) for t in walls],
                            "load_average_1min": round(os.getloadavg()[0], 1)})
            print(results[-1])
    finally:
        shutil.rmtree(folder)
    Path("bench/out").mkdir(parents=True, exist_ok=True)
    Path("bench/out/cold_start.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
