"""Depth order is the order a model computes its layers (what the report's charts and layer table
plot along "layer (depth order)"): torch module registration order, ONNX graph order of the
consuming nodes (not the exporter's initializer order), safetensors by natural block index; and
anonymous ONNX weights are named after the node that reads them. The ONNX files are real
``torch.onnx.export`` outputs."""

from __future__ import annotations

import warnings

import onnx
import torch
from safetensors.torch import save_file

import gate


class ForwardNotRegistration(torch.nn.Module):
    """Registered conv, body, head, proj; computed conv, proj, body, head (the shape of models whose
    last-registered projection runs first, like ddddocr's exported Gemm)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.body = torch.nn.Sequential(*[torch.nn.Linear(48, 48) for _ in range(3)])
        self.head = torch.nn.Linear(48, 40)
        self.proj = torch.nn.Linear(8 * 6 * 6, 48, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.proj(self.conv(x).flatten(1))))


def _export(model: torch.nn.Module, example: torch.Tensor, path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=False)


def test_onnx_rows_follow_the_graph_not_the_initializer_list(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "net.onnx"
    _export(ForwardNotRegistration(), torch.randn(2, 3, 8, 8), path)
    stored = [init.name for init in onnx.load(str(path)).graph.initializer]
    assert stored[-1].startswith("onnx::MatMul") and "head.weight" in stored[:-1]  # proj's weight is stored last
    rows = gate.scan(path, device="cpu").layers["name"].tolist()
    assert rows == ["conv", "proj", "body.0", "body.1", "body.2", "head"]  # forward order, proj read off its scope


def test_torch_modules_in_registration_order():
    torch.manual_seed(0)
    rows = gate.scan(ForwardNotRegistration(), device="cpu").layers["name"].tolist()
    assert rows == ["conv", "body.0", "body.1", "body.2", "head", "proj"]


class Unscoped(torch.nn.Module):
    """A weight used through a functional call at the top level: the exporter folds ``w * 2`` into a
    new initializer ``onnx::MatMul_<n>`` read by node ``/MatMul``, which has no module scope."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(48, 64))
        self.head = torch.nn.Linear(48, 40)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.nn.functional.linear(x, self.w * 2.0))


def test_anonymous_onnx_weights_are_named_after_their_node(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "unscoped.onnx"
    _export(Unscoped(), torch.randn(2, 64), path)
    graph = onnx.load(str(path)).graph
    anonymous = [init.name for init in graph.initializer if init.name.startswith("onnx::")]
    assert len(anonymous) == 1 and [n.name for n in graph.node if anonymous[0] in n.input] == ["/MatMul"]
    layers = gate.scan(path, device="cpu").layers
    assert layers["name"].tolist() == ["MatMul", "head"]
    assert layers.set_index("name").loc["MatMul", "shape"] == [48, 64]  # read as torch's [out, in]

    # Older exporters numbered such tensors and some left nodes unnamed: the same export with
    # initializers renamed to numbers and node names cleared.
    model = onnx.load(str(path))
    numbers = {init.name: str(135 + k) for k, init in enumerate(model.graph.initializer)}
    for init in model.graph.initializer:
        init.name = numbers[init.name]
    for node in model.graph.node:
        node.input[:] = [numbers.get(name, name) for name in node.input]
        node.name = ""
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "numbered.onnx"))
    names = gate.scan(tmp_path / "numbered.onnx", device="cpu").layers["name"].tolist()
    assert names == ["MatMul_0", "Gemm_1"]  # after the operator and its place in the graph


def test_safetensors_blocks_in_natural_order(tmp_path):
    generator = torch.Generator().manual_seed(0)
    state = {f"model.layer.{i}.weight": torch.randn(40, 40, generator=generator) for i in (10, 9, 2, 1, 0, 11)}
    save_file(state, str(tmp_path / "model.safetensors"))  # the header stores names sorted as text
    names = gate.scan(tmp_path / "model.safetensors", device="cpu").layers["name"].tolist()
    assert names == [f"model.layer.{i}" for i in (0, 1, 2, 9, 10, 11)]
