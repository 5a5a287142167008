"""Peak host memory of a scan does not grow with model size (streaming, one tensor at a time).

Generates Llama-shaped fp16 checkpoints of the same width and 4 and 16 blocks (4x the bytes),
scans each in a fresh process, and reports each process's peak RSS beside the checkpoint size.
The full Llama-7B shape (13.5 GB) is in bench_gpu_llama.py.

    python bench/bench_memory.py [--hidden 1024 --ffn 2752]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_checkpoint import generate  # noqa: E402

_CHILD = """
import json, resource, sys, time
import gate
start = time.perf_counter()
result = gate.scan(sys.argv[1], device=sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - start, "analysed": result.summary["num_analysed"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(index: Path, device: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(index), device], capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--ffn", type=int, default=2752)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="bench/out/memory.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for blocks in (4, 16):
            index = generate(Path(scratch) / f"b{blocks}", blocks, args.hidden, args.ffn, args.vocab)
            size_mb = sum(p.stat().st_size for p in index.parent.glob("*.safetensors")) / 2**20
            row = {"blocks": blocks, "checkpoint_mb": round(size_mb), **measure(index, args.device)}
            rows.append(row)
            print(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
