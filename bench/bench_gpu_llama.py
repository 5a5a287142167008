"""GPU benchmark: a Llama-7B-shaped fp16 sharded safetensors checkpoint scanned end to end.

Run on a machine with one CUDA GPU (for example through the workplace's device tool):
    python bench/bench_gpu_llama.py --workdir /tmp/llama7b
It generates the checkpoint (32 blocks of 4096x4096 and 11008x4096 matrices plus two 32000x4096
embeddings, ~13.5 GB) unless present, scans it with gate.scan(device="cuda") in a fresh process
(reporting wall time and peak host RSS), and times WeightWatcher 0.7.7's analyze() on a 2-block
subset of the same weights, extrapolated linearly to the 224 block matrices. ``--device cpu
--ww-blocks 0`` measures the CPU scan of the same checkpoint alone (host memory, no GPU needed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import measure  # noqa: E402
from llama_checkpoint import generate  # noqa: E402

_WW_CHILD = """
import json, sys, time, torch
from safetensors.torch import load_file
import weightwatcher
index = json.load(open(sys.argv[1]))["weight_map"]
blocks = int(sys.argv[2])
names = [n for n in index if n.startswith(tuple(f"model.layers.{b}." for b in range(blocks))) and n.endswith("proj.weight")]
class Holder(torch.nn.Module):
    pass
model = Holder()
root = __import__("pathlib").Path(sys.argv[1]).parent
for i, name in enumerate(names):
    weight = load_file(str(root / index[name]))[name]
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
    linear.weight.data = weight
    model.add_module(f"l{i}", linear)
watcher = weightwatcher.WeightWatcher(model=model)
start = time.perf_counter()
details = watcher.analyze()
print(json.dumps({"ww_seconds": time.perf_counter() - start, "ww_matrices": len(details)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llama7b"))
    parser.add_argument("--ww-blocks", type=int, default=2, help="0: do not time WeightWatcher")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="bench/out/gpu_llama.json")
    args = parser.parse_args()
    index = args.workdir / "model.safetensors.index.json"
    if not index.exists():
        generate(args.workdir, blocks=32, hidden=4096, ffn=11008, vocab=32000)
    ours = measure(index, args.device)
    result: dict = {"device": args.device, "gate": ours}
    if args.ww_blocks > 0:
        result.update(_weightwatcher(index, args.ww_blocks, ours["seconds"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def _weightwatcher(index: Path, blocks: int, our_seconds: float) -> dict:
    """WeightWatcher's time on the first ``blocks`` blocks, extrapolated to all 224 block matrices."""
    ww = subprocess.run([sys.executable, "-c", _WW_CHILD, str(index), str(blocks)], capture_output=True,
                        text=True, check=True)
    ww_row = json.loads(ww.stdout.strip().splitlines()[-1])
    ww_row["ww_extrapolated_224_s"] = ww_row["ww_seconds"] / ww_row["ww_matrices"] * 224
    return {"weightwatcher": ww_row, "ratio": ww_row["ww_extrapolated_224_s"] / our_seconds}


if __name__ == "__main__":
    main()
