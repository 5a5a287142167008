"""Layer planning: which tensors become matrices, how they are cut, and what is skipped (and why)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

import gate


def _top_eval(matrix: torch.Tensor) -> float:
    return float(scipy.linalg.svdvals(matrix.detach().double().numpy())[0] ** 2)


def test_matches_weightwatcher_on_dense_conv2d_embedding():
    """WeightWatcher 0.7.7 itself is the reference for Linear, pooled Conv2d and Embedding."""
    import weightwatcher

    torch.manual_seed(3)
    model = torch.nn.Sequential(
        torch.nn.Embedding(100, 24), torch.nn.Conv2d(8, 16, kernel_size=3), torch.nn.Linear(24, 64),
        torch.nn.Linear(64, 10),
    )
    ref = weightwatcher.WeightWatcher(model=model).analyze()
    ours = gate.scan(model, device="cpu").layers
    assert list(ours["layer_type"]) == ["embedding", "conv2d", "dense", "dense"]
    assert len(ref) == 4
    for (_, r), (_, o) in zip(ref.iterrows(), ours.iterrows()):
        assert (o["N"], o["M"], o["rf"], o["num_evals"]) == (r["N"], r["M"], r["rf"], r["num_evals"])
        assert o["alpha"] == pytest.approx(r["alpha"], abs=1e-6)
        assert o["xmin"] == pytest.approx(r["xmin"], rel=1e-6)
        assert o["lambda_max"] == pytest.approx(r["lambda_max"], rel=1e-9)
        assert o["log_norm"] == pytest.approx(r["log_norm"], rel=1e-9)


def test_recurrent_weights_are_split_per_gate(small_net):
    layers = gate.scan(small_net, device="cpu").layers.set_index("name")
    lstm_ih = small_net.lstm.weight_ih_l0  # (4*16, 24): gates i, f, g, o
    for k, gate_name in enumerate("ifgo"):
        row = layers.loc[f"lstm.weight_ih_l0.{gate_name}"]
        assert (row["N"], row["M"], row["layer_type"]) == (24, 16, "recurrent")
        assert row["lambda_max"] == pytest.approx(_top_eval(lstm_ih[16 * k:16 * (k + 1)]), rel=1e-10)
    gru_hh = small_net.gru.weight_hh_l0  # (3*12, 12): gates r, z, n
    for k, gate_name in enumerate("rzn"):
        row = layers.loc[f"gru.weight_hh_l0.{gate_name}"]
        assert row["lambda_max"] == pytest.approx(_top_eval(gru_hh[12 * k:12 * (k + 1)]), rel=1e-10)


def test_recurrent_gates_inferred_from_shapes_without_module(small_net):
    """A bare state dict has no module types: the gate count comes from weight_hh's shape."""
    by_module = gate.scan(small_net, device="cpu").layers.set_index("name")
    by_dict = gate.scan(small_net.state_dict(), device="cpu").layers.set_index("name")
    gates = [n for n in by_module.index if ".weight_" in n]
    assert len(gates) == 2 * 4 + 2 * 3
    np.testing.assert_allclose(by_dict.loc[gates, "alpha"], by_module.loc[gates, "alpha"], rtol=1e-12)


def test_conv1d_slices_pooled_and_skips_explained(small_net):
    layers = gate.scan(small_net, device="cpu").layers.set_index("name")
    conv1d = layers.loc["conv1d"]
    assert (conv1d["layer_type"], conv1d["N"], conv1d["M"], conv1d["rf"], conv1d["num_evals"]) == ("conv1d", 20, 12, 3, 36)
    W = small_net.conv1d.weight
    assert conv1d["lambda_max"] == pytest.approx(max(_top_eval(W[:, :, k]) for k in range(3)), rel=1e-10)
    assert layers.loc["tiny", "status"] == "skipped"
    assert "M*rf = 4" in layers.loc["tiny", "reason"]
    assert "norm" not in layers.index and "fc1.bias" not in layers.index  # not matrices


def test_conv2d_per_slice_option():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, kernel_size=(2, 3))
    pooled = gate.scan(conv, device="cpu").layers
    per_slice = gate.scan(conv, device="cpu", conv2d_method="per_slice").layers.set_index("name")
    assert len(pooled) == 1 and pooled.iloc[0]["rf"] == 6
    assert list(per_slice.index) == [f"weight[{i},{j}]" for i in range(2) for j in range(3)]
    top = per_slice.loc["weight[1,2]", "lambda_max"]
    assert top == pytest.approx(_top_eval(conv.weight[:, :, 1, 2]), rel=1e-10)  # no sqrt(1/2) per slice
    assert pooled.iloc[0]["lambda_max"] == pytest.approx(0.5 * per_slice["lambda_max"].max(), rel=1e-10)


def test_gpt2_style_conv1d_is_a_dense_layer():
    class Conv1D(torch.nn.Module):  # transformers' GPT-2 layer: a Linear stored as (in, out)
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(32, 96))
            self.bias = torch.nn.Parameter(torch.zeros(96))

    layers = gate.scan(torch.nn.ModuleDict({"c_attn": Conv1D()}), device="cpu").layers
    row = layers.iloc[0]
    assert (row["name"], row["layer_type"], row["N"], row["M"]) == ("c_attn", "dense", 96, 32)


def test_tied_weights_are_analysed_once():
    embedding = torch.nn.Embedding(50, 16)
    head = torch.nn.Linear(16, 50, bias=False)
    head.weight = embedding.weight
    layers = gate.scan(torch.nn.ModuleDict({"embed": embedding, "head": head}), device="cpu").layers
    assert list(layers["name"]) == ["embed"]


def test_unknown_scan_option_is_an_input_error():
    with pytest.raises(gate.errors.GateInputError, match="unknown scan option"):
        gate.scan(torch.nn.Linear(10, 10), devcie="cpu")


def test_convolutions_match_weightwatcher_reference(ww_reference_dir):
    """1x1 (plain and strided), 3x3 and strided 3x3 kernels against WeightWatcher 0.7.7's own
    analyze() on the same stored weights (tests/data/weightwatcher/make_conv_reference.py):
    every Conv2d, 1x1 included, has its pooled eigenvalues halved."""
    import pandas as pd

    ref = pd.read_csv(ww_reference_dir / "conv_details.csv")
    ours = gate.scan(ww_reference_dir / "conv_model.safetensors", device="cpu").layers
    ours = ours[ours["status"] == "ok"].reset_index(drop=True)
    assert list(ours["name"]) == [f"{i}" for i in ref["longname"]]
    assert list(ours["rf"]) == list(ref["rf"]) == [1, 9, 9, 1, 1]
    for column in ["N", "M", "num_evals", "num_pl_spikes"]:
        assert list(ours[column]) == list(ref[column]), column
    np.testing.assert_allclose(ours["alpha"], ref["alpha"], rtol=1e-6)
    for column in ["lambda_max", "xmin", "log_spectral_norm", "alpha_weighted", "log_norm", "log_alpha_norm", "D"]:
        np.testing.assert_allclose(ours[column], ref[column], rtol=1e-6, err_msg=column)


def test_peer_ratios_compare_a_layer_with_its_role_across_blocks():
    """q_proj and o_proj share a shape but not a role: each stable rank is judged against the
    median of the same projection in the other blocks (numpy float64 SVDs as the reference)."""
    generator = torch.Generator().manual_seed(5)
    state = {}
    for block in range(4):
        direction = torch.randn(64, 1, generator=generator) @ torch.randn(1, 64, generator=generator)
        state[f"model.layers.{block}.self_attn.q_proj.weight"] = 3 * direction + torch.randn(64, 64, generator=generator)
        state[f"model.layers.{block}.self_attn.o_proj.weight"] = torch.randn(64, 64, generator=generator)
    layers = gate.scan(state, device="cpu", benford=False).layers.set_index("name")

    def stable_rank(name: str) -> float:
        singular = scipy.linalg.svdvals(state[f"{name}.weight"].double().numpy())
        return float((singular**2).sum() / singular[0] ** 2)

    for role in ("q_proj", "o_proj"):
        names = [f"model.layers.{block}.self_attn.{role}" for block in range(4)]
        ranks = np.array([stable_rank(name) for name in names])
        np.testing.assert_allclose(layers.loc[names, "stable_rank_peer_ratio"], ranks / np.median(ranks), rtol=1e-6)
    q_ranks = [stable_rank(f"model.layers.{block}.self_attn.q_proj") for block in range(4)]
    o_ranks = [stable_rank(f"model.layers.{block}.self_attn.o_proj") for block in range(4)]
    assert max(q_ranks) < 0.5 * min(o_ranks)  # mixed together, every q_proj would look half-collapsed
