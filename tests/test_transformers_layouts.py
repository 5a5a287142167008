"""Real transformers models (built from tiny configs with transformers' own classes, no download),
saved with save_pretrained, scanned from their directories: rows against the module list derived
from the model itself, fused and per-expert MoE layouts against each other and against slices taken
here, every tensor of each file accounted for, and one model through ``models:/`` (MLflow
transformers flavor)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
from safetensors import safe_open

import gate
from tests.test_layouts import assert_accounted


def _configs():
    import transformers as tf

    small = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64)
    return {
        "llama": (tf.LlamaForCausalLM, tf.LlamaConfig(**small)),
        "qwen3_moe": (tf.Qwen3MoeForCausalLM, tf.Qwen3MoeConfig(**small, head_dim=8, moe_intermediate_size=48,
                                                                 num_experts=4, num_experts_per_tok=2)),
        "mixtral": (tf.MixtralForCausalLM, tf.MixtralConfig(**small, num_local_experts=4, num_experts_per_tok=2)),
        "gpt_oss": (tf.GptOssForCausalLM, tf.GptOssConfig(**small, head_dim=8, num_local_experts=4,
                                                           num_experts_per_tok=2)),
        "gpt2": (tf.GPT2LMHeadModel, tf.GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                                           bos_token_id=0, eos_token_id=0)),
        "bert": (tf.BertModel, tf.BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=64, max_position_embeddings=64)),
        "vit": (tf.ViTModel, tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, intermediate_size=64)),
        "whisper": (tf.WhisperForConditionalGeneration,
                    tf.WhisperConfig(vocab_size=128, d_model=32, encoder_layers=2, decoder_layers=2,
                                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                     decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=32,
                                     max_target_positions=32, pad_token_id=0, bos_token_id=1,
                                     eos_token_id=2, decoder_start_token_id=3)),
    }


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory):
    """name -> (model, save_pretrained directory)."""
    models = {}
    for name, (model_class, config) in _configs().items():
        torch.manual_seed(0)
        model = model_class(config).eval()
        directory = tmp_path_factory.mktemp(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save_pretrained(directory)
        models[name] = (model, directory)
    return models


def expected_rows(model: torch.nn.Module) -> set[str]:
    """Row names derived from the model itself: every parameter of two or more dimensions (tied ones
    once), named by its module; fused expert stacks give one name per expert (gate_up: two)."""
    modules = dict(model.named_modules())
    rows = set()
    for name, param in model.named_parameters():
        if param.ndim < 2:
            continue
        owner_name, _, leaf = name.rpartition(".")
        if type(modules[owner_name]).__name__.endswith("Experts"):
            if leaf.endswith("_bias"):
                continue
            parts = ("gate_proj", "up_proj") if leaf == "gate_up_proj" else (leaf,)
            rows |= {f"{owner_name}.{e}.{part}" for e in range(param.shape[0]) for part in parts}
        else:
            rows.add(name.removesuffix(".weight"))
    return rows


def _file_tensors(directory) -> list[str]:
    names = []
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(path, "pt") as handle:
            names.extend(handle.keys())
    return names


def _top_eval(matrix: torch.Tensor) -> float:
    return float(scipy.linalg.svdvals(matrix.detach().double().numpy())[0] ** 2)


@pytest.mark.parametrize("name", ["llama", "qwen3_moe", "gpt_oss", "gpt2", "bert", "vit", "whisper"])
def test_directory_rows_match_the_module_list(hf_models, name):
    model, directory = hf_models[name]
    result = gate.scan(directory, device="cpu", benford=False)
    in_memory = gate.scan(model, device="cpu", benford=False).layers
    assert set(in_memory["name"]) == expected_rows(model)
    if name != "vit":  # transformers 5 renames ViT's attention modules (q_proj) but writes the hub's names (query)
        assert set(result.layers["name"]) == expected_rows(model)
    np.testing.assert_allclose(sorted(result.layers["lambda_max"].dropna()),
                               sorted(in_memory["lambda_max"].dropna()), rtol=1e-6)
    assert_accounted(result, _file_tensors(directory))
    layer_types = set(result.layers["layer_type"])
    assert "other" not in layer_types or name == "vit"  # ViT's [1, 17, 32] position table: skipped, named
    if name == "vit":
        assert layer_types >= {"conv2d", "dense"}
    if name == "whisper":
        assert "conv1d" in layer_types


def test_fused_experts_in_memory_match_the_per_expert_files(hf_models):
    """Qwen3-MoE in transformers 5 holds experts.gate_up_proj [E, 2I, H] in memory and writes
    experts.<e>.gate_proj/up_proj/down_proj on disk: the same rows, the same values."""
    model, directory = hf_models["qwen3_moe"]
    in_memory = gate.scan(model, device="cpu", benford=False).layers.set_index("name")
    on_disk = gate.scan(directory, device="cpu", benford=False).layers.set_index("name")
    assert set(in_memory.index) == set(on_disk.index)
    experts = in_memory[in_memory["expert"].notna()]
    assert len(experts) == 2 * 4 * 3 and set(experts["expert"]) == {0, 1, 2, 3}
    assert set(experts["layer_type"]) == {"dense"}
    np.testing.assert_allclose(on_disk.loc[experts.index, "lambda_max"], experts["lambda_max"], rtol=1e-6)
    assert list(on_disk.loc[experts.index, "expert"]) == list(experts["expert"])
    stack = model.model.layers[1].mlp.experts.gate_up_proj  # [4, 96, 32]: gate rows 0..47, up 48..95
    assert experts.loc["model.layers.1.mlp.experts.2.up_proj", "lambda_max"] == pytest.approx(
        _top_eval(stack[2, 48:]), rel=1e-6)
    assert in_memory.loc["model.layers.0.mlp.gate", "layer_type"] == "dense"  # the router: dense, no expert
    assert in_memory.loc["model.layers.0.mlp.gate", "expert"] is pd.NA


def test_gpt_oss_interleaved_gate_up_and_mixtral_renamed_experts(hf_models):
    """GPT-OSS stores gate_up_proj [E, H, 2I] with gate and up interleaved (even/odd columns), on disk
    too; Mixtral's file names its experts w1 (gate), w3 (up), w2 (down)."""
    model, directory = hf_models["gpt_oss"]
    layers = gate.scan(directory, device="cpu", benford=False).layers.set_index("name")
    stack = model.model.layers[0].mlp.experts.gate_up_proj
    for e in range(4):
        assert layers.loc[f"model.layers.0.mlp.experts.{e}.gate_proj", "lambda_max"] == pytest.approx(
            _top_eval(stack[e][:, 0::2]), rel=1e-6)
        assert layers.loc[f"model.layers.0.mlp.experts.{e}.up_proj", "lambda_max"] == pytest.approx(
            _top_eval(stack[e][:, 1::2]), rel=1e-6)
    model, directory = hf_models["mixtral"]
    in_memory = gate.scan(model, device="cpu", benford=False).layers.set_index("name")
    assert set(in_memory.index) == expected_rows(model)
    on_disk = gate.scan(directory, device="cpu", benford=False)
    assert_accounted(on_disk, _file_tensors(directory))
    on_disk = on_disk.layers.set_index("name")
    for e in range(4):
        for file_name, module_name in [("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")]:
            disk_row = on_disk.loc[f"model.layers.1.block_sparse_moe.experts.{e}.{file_name}"]
            memory_row = in_memory.loc[f"model.layers.1.mlp.experts.{e}.{module_name}"]
            assert disk_row["expert"] == memory_row["expert"] == e
            assert disk_row["lambda_max"] == pytest.approx(memory_row["lambda_max"], rel=1e-6)


@pytest.mark.slow
def test_transformers_flavor_through_models_uri(hf_models, mlflow_tracking_uri, tmp_path):
    """A tiny BERT logged with mlflow.transformers and registered: the same rows as its directory."""
    import mlflow
    import mlflow.transformers
    from transformers import BertTokenizerFast

    model, directory = hf_models["bert"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(123)]))
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    mlflow.set_tracking_uri(mlflow_tracking_uri)
    mlflow.set_registry_uri(mlflow_tracking_uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mlflow.start_run():
            mlflow.transformers.log_model({"model": model, "tokenizer": tokenizer}, name="bert",
                                          task="feature-extraction", registered_model_name="tiny-bert-layouts",
                                          pip_requirements=["transformers", "torch"])
    from_registry = gate.scan("models:/tiny-bert-layouts/1", device="cpu", benford=False,
                              tracking_uri=mlflow_tracking_uri).layers.set_index("name")
    direct = gate.scan(directory, device="cpu", benford=False).layers.set_index("name")
    assert set(from_registry.index) == expected_rows(model)
    ok = direct[direct["status"] == "ok"].index
    np.testing.assert_allclose(from_registry.loc[ok, "alpha"], direct.loc[ok, "alpha"], rtol=1e-12)


def test_gpt2_causal_mask_buffers_are_skipped_not_analysed(hf_models, tmp_path):
    """Checkpoints written by older transformers (and the hub's gpt2 files) carry each block's causal
    mask, ``attn.bias`` [1, 1, n_positions, n_positions] of 0/1 floats, and ``attn.masked_bias``. The
    masks are named skipped rows, not conv layers, and stay out of the Benford digits (whose counts
    are checked against the exact Decimal reference over the learned matrices alone)."""
    from safetensors.torch import load_file, save_file

    from tests.test_benford import reference_counts

    _, directory = hf_models["gpt2"]
    state = load_file(str(directory / "model.safetensors"))
    learned = {name: value for name, value in state.items() if value.ndim >= 2 and value.is_floating_point()}
    for block in range(2):
        state[f"transformer.h.{block}.attn.bias"] = torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)
        state[f"transformer.h.{block}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(state, str(tmp_path / "model.safetensors"))
    result = gate.scan(tmp_path / "model.safetensors", device="cpu")
    layers = result.layers.set_index("name")
    for block in range(2):
        row = layers.loc[f"transformer.h.{block}.attn.bias"]
        assert row["status"] == "skipped" and "mask" in row["reason"]
    assert set(layers.index[layers["status"] == "ok"]) == {name.removesuffix(".weight") for name in learned}
    expected = sum((reference_counts(value.reshape(-1))[0] for value in learned.values()), np.zeros(9, dtype=np.int64))
    assert result.summary["benford_digit_counts"] == expected.tolist()
    assert_accounted(result, list(state))
