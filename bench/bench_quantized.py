"""FP8 block-wise (DeepSeek-V3 layout) vs bf16: what dequantization adds to a CPU scan.

One Llama-shaped checkpoint (bench/llama_checkpoint.py, scaled down) is written twice from the same
weights: in bfloat16, and as float8_e4m3fn with ``weight_scale_inv`` per 128 x 128 block (scale =
block amax / 448, the e4m3 maximum, as DeepSeek-V3's conversion does) plus the config.json
``quantization_config`` a real FP8 checkpoint has. Both are scanned with the default options,
alternately, several times in one process; the figure is the ratio of the medians (goal: <= 1.2),
in wall time and in the process's CPU time (all threads), which a loaded shared machine disturbs less.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gate.scanning.pipeline import scan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_checkpoint import generate  # noqa: E402

FP8_MAX = 448.0
BLOCK = 128


def to_fp8_blocks(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float8_e4m3fn weight and its [ceil(out/128), ceil(in/128)] scale_inv (W ~ fp8 * scale_inv)."""
    out, inp = weight.shape
    w = weight.to(torch.float32)
    scale = torch.empty(math.ceil(out / BLOCK), math.ceil(inp / BLOCK))
    q = torch.empty(out, inp, dtype=torch.float8_e4m3fn)
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            block = w[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK]
            scale[i, j] = block.abs().max().clamp(min=1e-12) / FP8_MAX
            q[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK] = (block / scale[i, j]).to(torch.float8_e4m3fn)
    return q, scale


def convert(source_index: Path, out: Path, fp8: bool) -> Path:
    """Rewrite every shard of the fp16 checkpoint as bf16 or FP8, one shard at a time."""
    out.mkdir(parents=True, exist_ok=True)
    weight_map = json.loads(source_index.read_text())["weight_map"]
    new_map: dict[str, str] = {}
    for shard in sorted(set(weight_map.values())):
        tensors = {}
        with safe_open(str(source_index.parent / shard), framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                if fp8 and tensor.ndim == 2 and "embed_tokens" not in name and "lm_head" not in name:
                    tensors[name], tensors[name + "_scale_inv"] = to_fp8_blocks(tensor)
                else:  # DeepSeek-V3 keeps embeddings, the head and norms in bf16
                    tensors[name] = tensor.to(torch.bfloat16)
        save_file(tensors, str(out / shard))
        new_map.update({name: shard for name in tensors})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": new_map}))
    config = {"model_type": "llama", "torch_dtype": "bfloat16"}
    if fp8:
        config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                         "weight_block_size": [BLOCK, BLOCK]}
    (out / "config.json").write_text(json.dumps(config))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--ffn", type=int, default=2816)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="weightgate-bench-quant-") as tmp:
        root = Path(tmp)
        index = generate(root / "fp16", args.blocks, args.hidden, args.ffn, args.vocab)
        checkpoints = {"bf16": convert(index, root / "bf16", fp8=False), "fp8": convert(index, root / "fp8", fp8=True)}
        times: dict[str, list[float]] = {name: [] for name in checkpoints}
        cpu: dict[str, list[float]] = {name: [] for name in checkpoints}
        rows = {}
        scan(str(checkpoints["bf16"]), device="cpu")  # warm-up: imports, thread pool, LAPACK
        for _ in range(args.repeats):
            for name, path in checkpoints.items():
                started, cpu_started = time.perf_counter(), time.process_time()
                result = scan(str(path), device="cpu")
                times[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - cpu_started)
                rows[name] = result.layers
    medians = {name: statistics.median(values) for name, values in times.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    analysed = {name: int((layers["status"] == "ok").sum()) for name, layers in rows.items()}
    fp8_rows = rows["fp8"]
    schemes = sorted(set(fp8_rows["quantization"].dropna()))
    shared = rows["bf16"].set_index("name")["alpha"].dropna()
    alpha_gap = (fp8_rows.set_index("name")["alpha"].reindex(shared.index) - shared).abs().max()
    print(f"shape: {args.blocks} blocks, hidden {args.hidden}, ffn {args.ffn}, vocab {args.vocab}")
    for name in checkpoints:
        print(f"{name}: median {medians[name]:.2f} s over {args.repeats} ({', '.join(f'{t:.2f}' for t in times[name])}); "
              f"{analysed[name]} layers analysed; CPU time median {cpu_medians[name]:.2f} s")
    print(f"fp8 quantization column: {schemes}")
    print(f"ratio fp8 / bf16: wall {medians['fp8'] / medians['bf16']:.3f}, "
          f"CPU {cpu_medians['fp8'] / cpu_medians['bf16']:.3f} (goal <= 1.20)")
    print(f"largest |alpha(fp8) - alpha(bf16)| over layers: {alpha_gap:.3f}")


if __name__ == "__main__":
    main()
