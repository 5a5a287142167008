"""PEFT LoRA adapters written by PEFT itself (get_peft_model + save_pretrained on a tiny Llama built
from a config), analysed as updates dW, merged into their base, and compared between versions.

References come from PEFT: each module's ``get_delta_weight`` and ``merge_and_unload``'s weights,
in float64 through numpy's eigvalsh.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gate.cli.app import main
from gate.compare import compare
from gate.scanning.pipeline import scan

TARGETS = ["q_proj", "v_proj", "up_proj", "embed_tokens"]


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def trained_adapter(base, seed: int, **lora):
    """A LoRA model whose B factors are non-zero, as after training (PEFT initialises B to zero)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, **lora))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_embedding" in name:  # embeddings start with A = 0 instead
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model


def peft_deltas(model) -> dict[str, np.ndarray]:
    """PEFT's own dW per adapted module, named like the base weight."""
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            clean = name.removeprefix("base_model.model.")
            deltas[clean] = module.get_delta_weight("default").detach().double().numpy()
    return deltas


def save_mlflow_transformers(peft_model, path) -> None:
    """mlflow.transformers.save_model of a PEFT model: MLflow stores only the adapter (``peft/``)."""
    import mlflow
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(95)} | {"[UNK]": 95}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[UNK]")
    mlflow.transformers.save_model(transformers_model={"model": peft_model, "tokenizer": tokenizer}, path=str(path),
                                   task="text-generation", pip_requirements=["transformers"])


@pytest.fixture(scope="module")
def lora_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    base = tiny_llama()
    base.save_pretrained(root / "base")
    v1 = trained_adapter(tiny_llama(), seed=1)
    v1.save_pretrained(root / "v1")
    deltas_v1 = peft_deltas(v1)
    save_mlflow_transformers(v1, root / "mlflow-model")
    merged = {k: v.detach().double().numpy() for k, v in v1.merge_and_unload().state_dict().items()}
    v2 = trained_adapter(tiny_llama(), seed=2, use_rslora=True)
    v2.save_pretrained(root / "v2")
    return root, deltas_v1, merged, peft_deltas(v2)


def evals_of(matrix: np.ndarray) -> np.ndarray:
    matrix = matrix if matrix.shape[0] >= matrix.shape[1] else matrix.T
    return np.sort(np.clip(np.linalg.eigvalsh(matrix.T @ matrix), 0, None))


def test_adapter_rows_are_the_updates_with_factor_metrics(lora_dirs):
    root, deltas, _, _ = lora_dirs
    config = json.loads((root / "v1" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    result = scan(str(root / "v1"), device="cpu", keep_spectra=True)
    rows = result.layers.set_index("name")
    # one row per adapted module, plus the embedding PEFT saves whole when embeddings are adapted
    assert set(rows.index) == set(deltas) | {"model.embed_tokens.base_layer"}
    assert rows.loc["model.embed_tokens", "layer_type"] == "embedding"
    for name, delta in deltas.items():
        reference = evals_of(delta)
        top = reference[-4:]
        np.testing.assert_allclose(result.spectra[name][-4:], top, rtol=1e-6, atol=1e-6 * top.max(), err_msg=name)
        assert rows.loc[name, "shape"] == list(delta.shape)
        assert rows.loc[name, "lora_rank"] == 4
        assert rows.loc[name, "lora_stable_rank"] == pytest.approx(reference.sum() / reference.max(), rel=1e-6)
        assert rows.loc[name, "lora_stable_rank_ratio"] == pytest.approx(reference.sum() / reference.max() / 4, rel=1e-6)
        assert rows.loc[name, "lora_norm"] == pytest.approx(np.linalg.norm(delta), rel=1e-6)
        assert rows.loc[name, "lora_scale"] == pytest.approx(8 / 4)


def test_rslora_scaling(lora_dirs):
    root, _, _, deltas_v2 = lora_dirs
    result = scan(str(root / "v2"), device="cpu", benford=False)
    row = result.layers.set_index("name").loc["model.layers.1.mlp.up_proj"]
    assert row["lora_scale"] == pytest.approx(8 / math.sqrt(4))
    assert row["lora_norm"] == pytest.approx(np.linalg.norm(deltas_v2["model.layers.1.mlp.up_proj"]), rel=1e-6)


def test_base_option_analyses_the_merged_weights(lora_dirs):
    root, _, merged, _ = lora_dirs
    outcome = CliRunner().invoke(main, ["scan", str(root / "v1"), "--base", str(root / "base"), "--format", "json",
                                        "--device", "cpu"])
    assert outcome.exit_code == 0, outcome.output
    layers = {row["name"]: row for row in json.loads(outcome.output)["layers"]}
    assert "model.layers.0.self_attn.k_proj" in layers  # the whole base model is scanned
    assert "lora_rank" not in layers["model.layers.0.self_attn.k_proj"] or layers["model.layers.0.self_attn.k_proj"]["lora_rank"] is None
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj"):
        reference = evals_of(merged[f"{name}.weight"])
        assert layers[name]["lora_rank"] == 4
        assert layers[name]["log_spectral_norm"] == pytest.approx(math.log10(reference.max()), abs=1e-6)
        assert layers[name]["stable_rank"] == pytest.approx(reference.sum() / reference.max(), rel=1e-6)


def test_base_that_does_not_fit_exits_2(lora_dirs, tmp_path):
    from safetensors.torch import save_file

    root, _, _, _ = lora_dirs
    save_file({"model.layers.0.self_attn.q_proj.weight": torch.zeros(8, 8)}, tmp_path / "other.safetensors")
    outcome = CliRunner().invoke(main, ["scan", str(root / "v1"), "--base", str(tmp_path / "other.safetensors")])
    assert outcome.exit_code == 2
    assert "does not fit base" in outcome.output and "model.layers.0.self_attn.q_proj.weight: base [8, 8]" in outcome.output


def test_compare_between_adapter_versions(lora_dirs):
    root, deltas_v1, _, deltas_v2 = lora_dirs
    result = compare(str(root / "v2"), str(root / "v1"), device="cpu")
    rows = result.layers.set_index("name")
    assert set(deltas_v1) <= set(rows.index)
    for name in deltas_v1:
        expected = np.linalg.norm(deltas_v2[name] - deltas_v1[name])
        assert rows.loc[name, "euclidean_distance"] == pytest.approx(expected, rel=1e-5)


def test_adapter_inside_an_mlflow_transformers_model(lora_dirs):
    root, deltas, _, _ = lora_dirs
    assert "peft_adaptor: peft" in (root / "mlflow-model" / "MLmodel").read_text()
    result = scan(str(root / "mlflow-model"), device="cpu", benford=False)
    rows = result.layers.set_index("name")
    assert set(deltas) <= set(rows.index)
    name = "model.layers.1.self_attn.v_proj"
    assert rows.loc[name, "lora_norm"] == pytest.approx(np.linalg.norm(deltas[name]), rel=1e-6)


def test_policy_rule_on_adapter_stable_rank_ratio(lora_dirs, tmp_path):
    root, deltas, _, _ = lora_dirs
    ratios = {name: evals_of(d).sum() / evals_of(d).max() / 4 for name, d in deltas.items()}
    threshold = sorted(ratios.values())[len(ratios) // 2]  # half the updates fall below it
    policy = tmp_path / "adapter-policy.yaml"
    policy.write_text(f"""schema_version: 1
name: adapter-rank-use
description: LoRA updates must use their rank.
rules:
  - id: uses-its-rank
    description: Every update's stable rank is at least a share of r.
    metric: lora_stable_rank_ratio
    scope: layer
    condition: {{min: {threshold}}}
    severity: block
""")
    outcome = CliRunner().invoke(main, ["check", str(root / "v1"), "--policy", str(policy), "--format", "json",
                                        "--device", "cpu"])
    decision = json.loads(outcome.output)
    assert outcome.exit_code == 1 and decision["decision"] == "block"
    offending = set(json.dumps(decision["rules"]).split('"')) & set(n for n, r in ratios.items() if r < threshold)
    assert offending == {n for n, r in ratios.items() if r < threshold}
