"""Shapes and containers beyond WeightWatcher's: recurrent cells, Conv3d/ConvTranspose, 3-D tensors of
unknown kind, ONNX recurrent operators, Constant nodes and external data, the same weights in three
containers, quantized tensors without scales, and the accounting of every tensor."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import scipy.linalg
import torch
from onnx import helper, numpy_helper
from safetensors import safe_open
from safetensors.torch import save_file

import gate
from gate.check import check
from gate.compare import compare
from gate.layers.kinds import NON_MATRIX_KINDS


def _top_eval(matrix) -> float:
    array = matrix.detach().double().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix, float)
    return float(scipy.linalg.svdvals(array)[0] ** 2)


def assert_accounted(result, tensor_names: list[str], renamed: bool = False) -> None:
    """Every tensor of the file has a row or is counted by kind, and the counts add up (``renamed``:
    the source lists some tensors under other names, as the ONNX source does for onnx:: weights)."""
    summary = result.summary
    with_rows = set(result.layers["tensor"])
    assert summary["num_tensors"] == len(tensor_names)
    assert summary["num_matrix_tensors"] == len(with_rows)
    assert renamed or with_rows <= set(tensor_names)
    counted = sum(summary[f"num_{kind}"] for kind in NON_MATRIX_KINDS)
    assert summary["num_matrix_tensors"] + counted == len(tensor_names)


class Cells(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.lstm_cell = torch.nn.LSTMCell(20, 12)
        self.gru_cell = torch.nn.GRUCell(12, 10)


@pytest.mark.parametrize("as_state_dict", [False, True])
def test_lstm_and_gru_cells_are_split_per_gate(as_state_dict):
    cells = Cells()
    layers = gate.scan(cells.state_dict() if as_state_dict else cells, device="cpu").layers.set_index("name")
    for k, letter in enumerate("ifgo"):
        row = layers.loc[f"lstm_cell.weight_ih.{letter}"]
        assert (row["layer_type"], row["N"], row["M"]) == ("recurrent", 20, 12)
        assert row["lambda_max"] == pytest.approx(_top_eval(cells.lstm_cell.weight_ih[12 * k:12 * (k + 1)]), rel=1e-9)
    for k, letter in enumerate("rzn"):
        row = layers.loc[f"gru_cell.weight_hh.{letter}"]
        assert row["lambda_max"] == pytest.approx(_top_eval(cells.gru_cell.weight_hh[10 * k:10 * (k + 1)]), rel=1e-9)
    assert len(layers) == 2 * 4 + 2 * 3


def test_conv3d_and_conv_transpose_pool_their_kernel_slices():
    torch.manual_seed(4)
    model = torch.nn.ModuleDict({
        "conv3d": torch.nn.Conv3d(6, 10, kernel_size=(2, 2, 3)),
        "up1d": torch.nn.ConvTranspose1d(12, 8, kernel_size=3),      # weight [in=12, out=8, 3]
        "up2d": torch.nn.ConvTranspose2d(16, 9, kernel_size=2),       # weight [16, 9, 2, 2]
        "up3d": torch.nn.ConvTranspose3d(9, 12, kernel_size=2, groups=3),  # weight [9, 4, 2, 2, 2]
    })
    layers = gate.scan(model, device="cpu").layers.set_index("name")
    expected = {"conv3d": ("conv3d", 10, 6, 12, 0.5), "up1d": ("conv1d", 12, 8, 3, 1.0),
                "up2d": ("conv2d", 16, 9, 4, 0.5), "up3d": ("conv3d", 9, 4, 8, 0.5)}
    for name, (layer_type, N, M, rf, factor) in expected.items():
        row = layers.loc[name]
        assert (row["layer_type"], row["N"], row["M"], row["rf"], row["num_evals"]) == (layer_type, N, M, rf, M * rf)
        weight = model[name].weight.detach()
        slices = weight.reshape(weight.shape[0], weight.shape[1], -1).permute(2, 0, 1)
        assert row["lambda_max"] == pytest.approx(factor * max(_top_eval(s) for s in slices), rel=1e-9), name
    per_slice = gate.scan(model["conv3d"], device="cpu", conv2d_method="per_slice").layers
    assert len(per_slice) == 12 and per_slice.iloc[-1]["name"] == "weight[1,1,2]"


def test_three_d_tensors_of_unknown_kind():
    """Alone (no config, router or channel chain), a file's 3-D tensor is a Conv1d kernel only with a
    small last dimension or 'conv' in its name."""
    torch.manual_seed(0)
    state = {
        "encoder.kernel": torch.randn(24, 16, 5),          # small last dim: Conv1d
        "pos_conv.weight": torch.randn(32, 8, 64),         # named conv: Conv1d despite 64 taps
        "lstm_stack": torch.randn(1, 128, 40),             # an ONNX-like stack: skipped with the reason
    }
    layers = gate.scan(state, device="cpu").layers.set_index("name")
    assert layers.loc["encoder.kernel", "layer_type"] == "conv1d" and layers.loc["encoder.kernel", "rf"] == 5
    assert layers.loc["pos_conv", "layer_type"] == "conv1d" and layers.loc["pos_conv", "rf"] == 64
    skipped = layers.loc["lstm_stack"]
    assert skipped["status"] == "skipped"
    assert "lstm_stack" in skipped["reason"] and "last dimension 40" in skipped["reason"] and "<= 16" in skipped["reason"]


def test_three_d_tensors_read_from_their_neighbours(tmp_path):
    """Issue 27: an unnamed long-kernel Conv1d stack ([C, 1, k] front end, [C, C, k] middle, [1, C, k]
    head) is read as convolutions by its chain of channels; an unnamed expert stack by its router or
    its sibling stack; a tensor with signs of both is skipped with a reason naming them."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    state = {"net.0.weight": randn(32, 1, 101), "net.0.bias": randn(32), "net.2.weight": randn(32, 32, 41),
             "net.2.bias": randn(32), "net.4.weight": randn(1, 32, 9),
             "blocks.0.moe.router.weight": randn(8, 64), "blocks.0.moe.w_in": randn(8, 96, 64),
             "blocks.1.moe.w_in": randn(6, 48, 64), "blocks.1.moe.w_out": randn(6, 64, 48),
             "odd.proj.weight": randn(40, 5, 30), "odd.mix.w": randn(5, 40, 24), "odd.mix.gate.weight": randn(5, 24)}
    layers = gate.scan(state, device="cpu").layers.set_index("name")
    for name, rf, M in (("net.0", 101, 1), ("net.2", 41, 32), ("net.4", 9, 1)):
        assert (layers.loc[name, "layer_type"], layers.loc[name, "rf"], layers.loc[name, "M"]) == ("conv1d", rf, M)
    experts = layers[layers["tensor"] == "blocks.0.moe.w_in"]
    assert list(experts.index) == [f"blocks.0.moe.{e}.w_in" for e in range(8)]
    assert set(experts["layer_type"]) == {"dense"} and set(experts["N"]) == {96} and set(experts["M"]) == {64}
    assert len(layers[layers["tensor"].isin(["blocks.1.moe.w_in", "blocks.1.moe.w_out"])]) == 12  # sibling stacks
    odd = layers.loc["odd.mix.w"]
    assert odd["status"] == "skipped" and "an expert stack (router odd.mix.gate.weight" in odd["reason"]
    assert "a convolution (its 40 in-channels are the out-channels of odd.proj.weight" in odd["reason"]


def test_three_d_tensors_read_from_config_json(tmp_path):
    """config.json beside the weights: an expert count equal to the first dimension, a kernel size equal
    to the last, decide for tensors no name or neighbour explains; without it they stay unread."""
    generator = torch.Generator().manual_seed(1)
    state = {"a.w": torch.randn(4, 64, 32, generator=generator), "b.w": torch.randn(32, 16, 30, generator=generator)}
    save_file(state, str(tmp_path / "model.safetensors"))
    bare = gate.scan(tmp_path, device="cpu").layers
    assert set(bare["status"]) == {"skipped"} and bare["reason"].str.contains("config.json").all()
    (tmp_path / "config.json").write_text('{"model_type": "toy", "text_config": {"num_local_experts": 4}, '
                                          '"conv_kernel": [30, 3]}')
    layers = gate.scan(tmp_path, device="cpu").layers.set_index("name")
    assert list(layers.index) == ["a.0.w", "a.1.w", "a.2.w", "a.3.w", "b.w"]
    assert layers.loc["b.w", "layer_type"] == "conv1d" and layers.loc["b.w", "rf"] == 30
    assert set(layers.loc["a.0.w":"a.3.w", "M"]) == {32}


class Recurrent(torch.nn.Module):
    """LSTM + bidirectional GRU + Linear on 3-D input (exported as MatMul with a transposed weight)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lstm = torch.nn.LSTM(24, 16, batch_first=True)
        self.gru = torch.nn.GRU(16, 12, batch_first=True, bidirectional=True)
        self.fc = torch.nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(x)
        h, _ = self.gru(h)
        return self.fc(h)


@pytest.fixture(scope="module")
def containers(tmp_path_factory):
    """One model in four containers: state dict .pt, safetensors, a torch.onnx.export, and a
    safetensors copy of the ONNX file's own initializers."""
    folder = tmp_path_factory.mktemp("containers")
    model = Recurrent().eval()
    torch.save(model.state_dict(), folder / "model.pt")
    save_file(model.state_dict(), folder / "model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 5, 24),), folder / "model.onnx", dynamo=False)
    exported = onnx.load(folder / "model.onnx")
    inits = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in exported.graph.initializer}
    save_file(inits, folder / "onnx_copy.safetensors")
    return model, folder


def _ok(result) -> dict[str, float]:
    layers = result.layers[result.layers["status"] == "ok"]
    return dict(zip(layers["name"], layers["lambda_max"]))


def test_onnx_recurrent_weights_split_per_direction_and_gate(containers):
    """ONNX W/R are [directions, gates*hidden, .] in gate order i,o,f,c (LSTM) and z,r,h (GRU)."""
    model, folder = containers
    result = gate.scan(folder / "model.onnx", device="cpu")
    rows = _ok(result)
    W = numpy_helper.to_array(next(i for i in onnx.load(folder / "model.onnx").graph.initializer
                                   if list(i.dims) == [2, 36, 16]))  # GRU W, two directions
    for direction, suffix in enumerate(["", "_reverse"]):
        for k, letter in enumerate("zrn"):
            assert rows[f"gru.weight_ih_l0{suffix}.{letter}"] == pytest.approx(
                _top_eval(W[direction, 12 * k:12 * (k + 1)]), rel=1e-9)
    # ONNX's c gate is torch's g: the same matrix as torch's third LSTM block
    assert rows["lstm.weight_ih_l0.g"] == pytest.approx(_top_eval(model.lstm.weight_ih_l0[32:48]), rel=1e-6)
    types = dict(zip(result.layers["name"], result.layers["layer_type"]))
    assert types["fc"] == "dense" and types["lstm.weight_hh_l0.o"] == "recurrent"


def test_same_weights_in_every_container_give_the_same_matrices_and_decision(containers):
    model, folder = containers
    reference = _ok(gate.scan(model, device="cpu"))
    assert len(reference) == 8 + 12 + 1
    exported = onnx.load(folder / "model.onnx")
    stored = {"model.pt": list(model.state_dict()), "model.safetensors": list(model.state_dict()),
              "model.onnx": [i.name for i in exported.graph.initializer]
              + [n.output[0] for n in exported.graph.node if n.op_type == "Constant"]}
    for name in ("model.pt", "model.safetensors", "model.onnx"):
        result = gate.scan(folder / name, device="cpu")
        assert_accounted(result, stored[name], renamed=name == "model.onnx")
        got = _ok(result)
        assert set(got) == set(reference), name
        for layer, value in reference.items():
            assert got[layer] == pytest.approx(value, rel=1e-6), (name, layer)
    decisions = {(a, b): check(folder / a, baseline=folder / b, device="cpu").decision
                 for a, b in [("model.onnx", "model.safetensors"), ("model.pt", "model.onnx")]}
    alone = check(folder / "model.safetensors", device="cpu").decision.decision
    for pair, decision in decisions.items():
        assert decision.decision == alone, (pair, [r for r in decision.rules if r.status != "passed"])
    distances = compare(folder / "model.onnx", folder / "model.safetensors", device="cpu")
    assert distances.summary["num_matched"] == len(reference)
    assert distances.summary["total_euclidean_distance"] == pytest.approx(0.0, abs=1e-6)
    assert distances.summary["shape_mismatch"] == []


def test_safetensors_copy_of_onnx_initializers(containers):
    """torch's exporter names the recurrent inputs onnx::LSTM_<n>: read as ONNX stacks, not conv1d."""
    model, folder = containers
    result = gate.scan(folder / "onnx_copy.safetensors", device="cpu")
    layers = result.layers
    assert "conv1d" not in set(layers["layer_type"])
    recurrent = layers[layers["layer_type"] == "recurrent"]
    assert len(recurrent) == 8 + 12
    assert sorted(recurrent["lambda_max"]) == pytest.approx(
        sorted(v for k, v in _ok(gate.scan(model, device="cpu")).items() if k != "fc"), rel=1e-6)
    with safe_open(folder / "onnx_copy.safetensors", "pt") as handle:
        assert_accounted(result, list(handle.keys()))


def test_onnx_weights_in_constant_nodes_and_external_data(tmp_path):
    torch.manual_seed(1)
    w1, w2 = torch.randn(32, 20).numpy(), torch.randn(10, 32).numpy()
    nodes = [
        helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(w1, "w1")),
        helper.make_node("Constant", [], ["w2"], value=numpy_helper.from_array(w2, "w2")),
        helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
        helper.make_node("Gemm", ["h", "w2"], ["y"], transB=1),
    ]
    graph = helper.make_graph(nodes, "constants", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 20])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 10])])
    onnx.save(helper.make_model(graph), tmp_path / "constants.onnx")
    layers = gate.scan(tmp_path / "constants.onnx", device="cpu").layers.set_index("name")
    assert layers.loc["w1", "lambda_max"] == pytest.approx(_top_eval(w1), rel=1e-9)
    assert layers.loc["w2", "layer_type"] == "dense"

    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    graph = helper.make_graph(nodes[2:], "external", graph.input, graph.output, initializer=inits)
    path = tmp_path / "external" / "model.onnx"
    path.parent.mkdir()
    onnx.save(helper.make_model(graph), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    assert (path.parent / "weights.bin").stat().st_size == (w1.size + w2.size) * 4
    layers = gate.scan(path, device="cpu").layers.set_index("name")
    assert layers.loc["w1", "lambda_max"] == pytest.approx(_top_eval(w1), rel=1e-9)
    assert layers.loc["w2", "lambda_max"] == pytest.approx(_top_eval(w2), rel=1e-9)


def test_quantized_weight_without_scale_and_other_tensors_are_accounted_for(tmp_path):
    """An FP8 weight nothing dequantizes gets a skipped row naming it; integer buffers, vectors and
    the scales beside a quantized weight are counted by kind."""
    torch.manual_seed(0)
    state = {
        "dense.weight": torch.randn(24, 16),
        "dense.bias": torch.randn(24),
        "fp8.weight": torch.randn(32, 16).to(torch.float8_e4m3fn),
        "fp8.weight_scale_odd": torch.ones(3),       # not a recognised scale: a vector
        "int8.weight": torch.randint(-100, 100, (16, 16), dtype=torch.int8),
        "int8.weight_scale": torch.ones(16, 1),      # beside a quantized weight: a quantization part
        "position_ids": torch.arange(8).unsqueeze(0),
        "temperature": torch.tensor(0.5),
    }
    path = tmp_path / "mixed.safetensors"
    save_file(state, path)
    result = gate.scan(path, device="cpu")
    layers = result.layers.set_index("name")
    assert layers.loc["fp8", "status"] == "skipped"
    assert "fp8.weight (float8_e4m3fn)" in layers.loc["fp8", "reason"] and "scale" in layers.loc["fp8", "reason"]
    # int8 with a per-channel scale is dequantized (gate.sources.quantization) and analysed
    assert (layers.loc["int8", "status"], layers.loc["int8", "quantization"]) == ("ok", "int8/per_channel")
    assert layers.loc["dense", "status"] == "ok"
    summary = result.summary
    assert (summary["num_vector"], summary["num_integer_buffer"], summary["num_scalar"],
            summary["num_quantization_part"]) == (2, 1, 1, 1)
    assert_accounted(result, list(state))


def test_policy_expert_filter(tmp_path):
    import pandas as pd

    from gate.policy.frames import select_layers
    from gate.policy.schema import PolicyError, parse_policy

    def policy(experts) -> str:
        return ("schema_version: 1\nrules:\n  - {id: r, description: d, metric: alpha, scope: layer, "
                f"severity: warn, condition: {{max: 6}}, layers: {{experts: {experts}}}}}\n")

    layers = pd.DataFrame({"name": ["router", "e.0.up", "e.1.up", "e.2.up"], "layer_type": ["dense"] * 4,
                           "status": ["ok"] * 4, "expert": pd.array([None, 0, 1, 2], dtype="Int64")})
    selected = {experts: list(select_layers(parse_policy(policy(experts), "p.yaml").rules[0], layers)["name"])
                for experts in ("all", "only", "exclude", "[0, 2]")}
    assert selected == {"all": ["router", "e.0.up", "e.1.up", "e.2.up"], "only": ["e.0.up", "e.1.up", "e.2.up"],
                        "exclude": ["router"], "[0, 2]": ["e.0.up", "e.2.up"]}
    with pytest.raises(PolicyError, match="experts"):
        parse_policy(policy("some"), "p.yaml")
