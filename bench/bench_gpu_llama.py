"""GPU benchmark in one command: a Llama-7B-shaped fp16 sharded safetensors checkpoint, generated,
scanned end to end on the GPU, a subset of its layers re-checked on the CPU path, figures to JSON.

Needs only what the device machine has (Python 3.12, torch with CUDA, numpy, scipy, pandas,
safetensors, click, tqdm, pyyaml) plus threadpoolctl (a pure-Python wheel, for the CPU re-check):
no mlflow, Great Expectations, powerlaw or WeightWatcher. From the repository root here:

    pip download threadpoolctl --no-deps -d .wheels && echo /.wheels/ >> .git/info/exclude

then one device call, carrying .wheels (about 5 minutes on an H200: ~1.5 min to generate 13.5 GB):

    pip install --no-index --no-deps .wheels/*.whl; PYTHONPATH=$PWD PYTHONUNBUFFERED=1 \\
        python bench/bench_gpu_llama.py --workdir /tmp/llama7b --out $OUT/gpu_llama.json

Writes: end-to-end scan seconds (a fresh process: imports, reading 13.5 GB, Gram products, solves,
fits, Benford digits, fingerprint), eigen-solve seconds, host peak RSS, GPU peak memory, and the
largest differences between the GPU scan and the CPU path on the re-checked layers.
Goals (issue 17): <= 30 s end to end on one H100/H200, <= 4 GB host RSS.
``--ww-blocks N`` also times WeightWatcher 0.7.7 on N blocks where it is installed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_checkpoint import generate  # noqa: E402

# The scan, in a fresh process so that its peak RSS and import time are its own.
_SCAN_CHILD = """
import json, resource, sys, time
start = time.perf_counter()
import torch
import gate
result = gate.scan(sys.argv[1], device=sys.argv[2])
seconds = time.perf_counter() - start
gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
result.layers.to_json(sys.argv[3], orient="records")
print(json.dumps({"end_to_end_s": seconds, "eigensolve_s": result.summary["eigensolve_seconds"],
                  "analysed": result.summary["num_analysed"], "skipped": result.summary["num_skipped"],
                  "host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "gpu_peak_mb": gpu_peak, "weights_sha256": result.weights_sha256}))
"""



def recheck_tensors(blocks: int) -> tuple[str, ...]:
    """Layers re-solved on the CPU path (gate's pool strategy): one of each shape, and an embedding."""
    return ("model.layers.0.self_attn.q_proj.weight", f"model.layers.{blocks - 1}.mlp.down_proj.weight",
            f"model.layers.{blocks // 2}.mlp.gate_proj.weight", "lm_head.weight")

COMPARED = ("lambda_max", "alpha", "xmin", "log_norm", "stable_rank")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llama7b"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--recheck", type=int, default=4, help="how many of the 4 CPU re-check layers")
    parser.add_argument("--blocks", type=int, default=32, help="Llama-7B: 32 (smaller for a dry run on a CPU)")
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--ffn", type=int, default=11008)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--ww-blocks", type=int, default=0, help="also time WeightWatcher on N blocks (0: no)")
    parser.add_argument("--out", default="bench/out/gpu_llama.json")
    args = parser.parse_args()
    import torch

    index = args.workdir / "model.safetensors.index.json"
    result: dict = {"device": args.device, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    if not index.exists():
        started = time.perf_counter()
        generate(args.workdir, blocks=args.blocks, hidden=args.hidden, ffn=args.ffn, vocab=args.vocab,
                 device="cuda" if torch.cuda.is_available() else "cpu")
        result["generate_s"] = time.perf_counter() - started
    layers_file = args.workdir.parent / f"{args.workdir.name}-layers.json"
    child = subprocess.run([sys.executable, "-c", _SCAN_CHILD, str(index), args.device, str(layers_file)],
                           capture_output=True, text=True)
    if child.returncode != 0:
        raise SystemExit(child.stderr)
    result["gate"] = json.loads(child.stdout.strip().splitlines()[-1])
    result["cpu_recheck"] = _cpu_recheck(index, layers_file, recheck_tensors(args.blocks)[:args.recheck])
    if args.ww_blocks > 0:
        result["weightwatcher"] = _weightwatcher(index, args.ww_blocks, result["gate"]["end_to_end_s"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def _cpu_recheck(index: Path, layers_file: Path, names: tuple[str, ...]) -> dict:
    """The chosen tensors scanned again through the CPU path (gate.scanning.pipeline.analyse_tensors on a
    subset: the same seam a distributed scan uses), and the largest relative difference per metric."""
    import pandas as pd
    import torch

    from gate.layers.plan import PlanOptions
    from gate.layers.planner import plan_layers
    from gate.options import ScanOptions
    from gate.scanning.pipeline import analyse_tensors
    from gate.sources import open_source

    started = time.perf_counter()
    options = ScanOptions(device="cpu")
    with open_source(index) as weights:
        plans = plan_layers(weights.tensor_infos(), PlanOptions.of(options))
        partial = analyse_tensors(weights, plans, names, options, torch.device("cpu"))
    gpu = pd.read_json(layers_file, orient="records").set_index("name")
    worst: dict[str, float] = {}
    for row in partial.rows.values():
        for metric in COMPARED:
            reference = row[metric]
            worst[metric] = max(worst.get(metric, 0.0), abs(gpu.loc[row["name"], metric] - reference) / abs(reference))
    return {"layers": list(names), "seconds": time.perf_counter() - started, "max_relative_difference": worst,
            "solve_precision_cpu": sorted({row["solve_precision"] for row in partial.rows.values()})}


_WW_CHILD = """
import json, sys, time, torch
from safetensors.torch import load_file
import weightwatcher
index = json.load(open(sys.argv[1]))["weight_map"]
blocks = int(sys.argv[2])
names = [n for n in index if n.startswith(tuple(f"model.layers.{b}." for b in range(blocks))) and n.endswith("proj.weight")]
model = torch.nn.Module()
root = __import__("pathlib").Path(sys.argv[1]).parent
for i, name in enumerate(names):
    weight = load_file(str(root / index[name]))[name]
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
    linear.weight.data = weight
    model.add_module(f"l{i}", linear)
start = time.perf_counter()
details = weightwatcher.WeightWatcher(model=model).analyze()
print(json.dumps({"ww_seconds": time.perf_counter() - start, "ww_matrices": len(details)}))
"""


def _weightwatcher(index: Path, blocks: int, our_seconds: float) -> dict:
    """WeightWatcher's time on the first ``blocks`` blocks, extrapolated to all 224 block matrices."""
    ww = subprocess.run([sys.executable, "-c", _WW_CHILD, str(index), str(blocks)], capture_output=True,
                        text=True, check=True)
    row = json.loads(ww.stdout.strip().splitlines()[-1])
    row["ww_extrapolated_224_s"] = row["ww_seconds"] / row["ww_matrices"] * 224
    row["ratio"] = row["ww_extrapolated_224_s"] / our_seconds
    return row


if __name__ == "__main__":
    main()
