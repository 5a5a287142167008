"""The safe pickle reader against torch.load(weights_only=False) on the same whole-model pickle.

Builds a stack of Linear layers (default ~128 MB of float32), saves it with ``torch.save(model)``
(the zip format mlflow.pytorch's pickle flavor writes), then in fresh processes, alternately:

* ``safe``: gate/sources/pickled reads the file (no code from it runs) and every tensor is loaded
  and summed (so each byte is read once, as a scan would);
* ``torch``: ``torch.load(path, weights_only=False)`` (runs the file's code) and every tensor of the
  module's state dict summed the same way.

Both processes import the same modules (torch and gate/sources, as weightgate's process has them
when ``--allow-pickle`` makes it call torch.load). Reports the best wall time of each (load + sums,
imports excluded), their ratio (goal: safe at most 1.5x torch's), and each process's peak RSS
(``resource.getrusage``) and its rise over the RSS after imports (psutil), goal: not above torch's.

    python bench/bench_pickle.py [--layers 16 --width 2048 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

_CHILD = """
import json, resource, sys, time
import psutil, torch
from gate.sources.pickled.source import PickledSource, read_pickled  # both: weightgate's process has it loaded
mode, path = sys.argv[1], sys.argv[2]
after_imports = psutil.Process().memory_info().rss
start = time.perf_counter()
total = 0.0
if mode == "safe":
    content, found = read_pickled(__import__("pathlib").Path(path))
    source = PickledSource(found, path)
    for info in source.tensor_infos():
        total += float(source.load(info.name).sum())
else:
    model = torch.load(path, weights_only=False)
    for tensor in model.state_dict().values():
        total += float(tensor.sum())
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "checksum": total, "peak_rss_mb": peak / 2**20,
                  "rise_mb": (peak - after_imports) / 2**20}))
"""


def build(path: Path, layers: int, width: int) -> float:
    torch.manual_seed(0)
    shapes = [(width, width // 2) if i % 2 == 0 else (width // 2, width) for i in range(layers)]
    model = torch.nn.Sequential(*(torch.nn.Linear(*shape) for shape in shapes))
    torch.save(model, path)
    return path.stat().st_size / 2**20


def run(mode: str, path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, mode, str(path)], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/out/pickle.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "whole_model.pt"
        size_mb = build(path, args.layers, args.width)
        runs = {"safe": [], "torch": []}
        for _ in range(args.repeats):
            for mode in runs:  # alternated, so that both see the same page cache and machine load
                runs[mode].append(run(mode, path))
    best = {mode: min(r["seconds"] for r in rows) for mode, rows in runs.items()}
    assert abs(runs["safe"][0]["checksum"] - runs["torch"][0]["checksum"]) < 1e-6 * size_mb * 2**18, "different weights"
    summary = {
        "file_mb": round(size_mb, 1),
        "seconds": {mode: [round(r["seconds"], 3) for r in rows] for mode, rows in runs.items()},
        "time_ratio_safe_over_torch": round(best["safe"] / best["torch"], 2),
        "peak_rss_mb": {mode: round(max(r["peak_rss_mb"] for r in rows)) for mode, rows in runs.items()},
        "rss_rise_mb": {mode: round(max(r["rise_mb"] for r in rows)) for mode, rows in runs.items()},
    }
    print(json.dumps(summary, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
