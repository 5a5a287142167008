"""Generate a Llama-shaped sharded fp16 safetensors checkpoint, one shard per block, streamed to disk.

Shapes follow Llama-7B (hidden 4096, MLP 11008, vocab 32000); ``--hidden``/``--ffn`` scale it down
for machines without the disk or time for 13.5 GB. Weights are random with a heavy-tailed spectrum
(a random matrix plus a few strong rank-one spikes), generated block by block so that generating
needs no more memory than one block.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def layer(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    device = generator.device
    weight = torch.randn(rows, cols, generator=generator, device=device) / cols**0.5
    for strength in (8.0, 4.0, 2.0):
        u = torch.randn(rows, 1, generator=generator, device=device) / rows**0.5
        v = torch.randn(1, cols, generator=generator, device=device) / cols**0.5
        weight += strength * u @ v
    return weight.to(torch.float16).cpu()


def generate(out: Path, blocks: int, hidden: int, ffn: int, vocab: int, seed: int = 0, device: str = "cpu") -> Path:
    """Write the checkpoint; ``device="cuda"`` draws the weights on the GPU (minutes faster for the
    7B shape; a different random stream from the CPU's, same statistics)."""
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device=device).manual_seed(seed)
    weight_map: dict[str, str] = {}
    shards = [("embed", {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden)})]
    for b in range(blocks):
        prefix = f"model.layers.{b}"
        shapes = {f"{prefix}.self_attn.{p}_proj.weight": (hidden, hidden) for p in "qkvo"}
        shapes.update({f"{prefix}.mlp.gate_proj.weight": (ffn, hidden), f"{prefix}.mlp.up_proj.weight": (ffn, hidden),
                       f"{prefix}.mlp.down_proj.weight": (hidden, ffn), f"{prefix}.input_layernorm.weight": (hidden,)})
        shards.append((f"block{b:03d}", shapes))
    total = len(shards)
    for index, (label, shapes) in enumerate(shards, start=1):
        filename = f"model-{index:05d}-of-{total:05d}.safetensors"
        tensors = {name: (layer(*shape, generator) if len(shape) == 2 else torch.ones(shape, dtype=torch.float16))
                   for name, shape in shapes.items()}
        save_file(tensors, str(out / filename))
        weight_map.update({name: filename for name in tensors})
        del tensors
    index_path = out / "model.safetensors.index.json"
    index_path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    return index_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--ffn", type=int, default=11008)
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args()
    print(generate(args.out, args.blocks, args.hidden, args.ffn, args.vocab))


if __name__ == "__main__":
    main()
