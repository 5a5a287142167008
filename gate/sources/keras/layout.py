"""Where each variable of a Keras weights file lives and what it is, for the two layouts Keras writes.

Keras 3 (``model.weights.h5`` inside a ``.keras`` archive, ``save_weights("x.weights.h5")``): one group
per layer, reached through each model's ``layers`` group under a name made from the layer's class
(:func:`gate.sources.keras.config._assign_keys`), with the variables as ``vars/0``, ``vars/1`` ... in
``build()`` order; a recurrent layer keeps its cell's variables in ``cell/vars``, ``Bidirectional`` in
``forward_layer`` and ``backward_layer``, other wrappers in ``layer``; an ``optimizer`` group holds the
optimizer's variables.

Legacy ``.h5`` (Keras 2's ``model.save``/``save_weights``, Keras 3's ``model.save("x.h5")``): a
``model_weights`` group (or the file root, for weights only) whose ``layer_names`` attribute lists the
layers in model order, each layer group's ``weight_names`` attribute naming its variables
(``lstm/lstm_cell/kernel:0``), and an ``optimizer_weights`` group.

Variables come out in the model's forward order (the config's layer list). Every dataset of the file
is listed: those no layer of the config accounts for keep their file path as name and, when they
have more than two dimensions, a skip reason (their layout is unknown).
"""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np

from gate.sources.base import natural_key
from gate.sources.keras.config import LayerNode, class_from_name, container, inferred_node, is_wrapper
from gate.sources.keras.roles import WRAPPERS, Transform, identity, positional_roles, role_from_name, torch_tensors

OPTIMIZER_GROUPS = ("optimizer", "optimizer_weights")


@dataclass(frozen=True)
class KerasVariable:
    """One tensor a source lists: torch-style ``name``, the HDF5 ``dataset`` it is read from, the Keras
    layer class (``module_type``; ``None`` when no config entry or default name tells it: the layout
    is then unknown) and the transform to torch's orientation."""

    name: str
    dataset: str
    module_type: str | None
    transform: Transform

    @property
    def is_optimizer_state(self) -> bool:
        return self.module_type is None and self.dataset.strip("/").split("/", 1)[0] in OPTIMIZER_GROUPS


class _Collector:
    """Variables in the order found, and the datasets they claim."""

    def __init__(self) -> None:
        self.variables: list[KerasVariable] = []
        self.claimed: set[str] = set()

    def add(self, dataset: h5py.Dataset, path: str, class_name: str, role: str, suffix: str = "") -> None:
        for tensor in torch_tensors(class_name, role, dataset.shape, suffix):
            self.variables.append(KerasVariable(_join(path, tensor.leaf), dataset.name, class_name or None,
                                                tensor.transform))
        self.claimed.add(dataset.name)

    def unclaimed(self, file: h5py.File) -> list[KerasVariable]:
        """Every dataset no layer claimed, in file order: optimizer state, or weights of unknown layout."""
        found: list[KerasVariable] = []

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset) and obj.name not in self.claimed:
                found.append(KerasVariable(name.replace("/", "."), obj.name, None, identity))

        file.visititems(visit)
        return sorted(found, key=lambda v: (not v.is_optimizer_state, natural_key(v.name)))


def keras3_variables(file: h5py.File, root: LayerNode) -> list[KerasVariable]:
    """The variables of a Keras 3 weights file, walked along ``root`` (from the config, or inferred
    from the file by :func:`gate.sources.keras.config.inferred_node`), then those of layers the walk
    did not reach (a subclassed model's attributes, whose config lists no layers)."""
    collector = _Collector()
    _walk_layer(collector, root, file, "")
    _walk_unreached(collector, file)
    return collector.variables + collector.unclaimed(file)


# Groups Keras adds between a layer and its variables: not part of the torch-style path.
_PLUMBING = frozenset({"layers", "_layer_checkpoint_dependencies", "cell", "forward_layer", "backward_layer", "layer"})


def _walk_unreached(collector: _Collector, file: h5py.File) -> None:
    """Layers the config does not describe, found as groups with ``vars``: the class from the group's
    name or its ``vars`` group's ``name`` attribute (both Keras defaults: ``conv2d_1``), in file order."""
    groups: list[tuple[str, h5py.Group]] = []
    file.visititems(lambda name, obj: groups.append((name, obj)) if isinstance(obj, h5py.Group) and "vars" in obj else None)
    for name, group in groups:
        parts = name.split("/")
        variables = group["vars"]
        if parts[0] in OPTIMIZER_GROUPS or not isinstance(variables, h5py.Group):
            continue
        if not any(isinstance(v, h5py.Dataset) and v.name not in collector.claimed for v in variables.values()):
            continue
        node = inferred_node(parts[-1], group)
        if not node.class_name and parts[-1] == "cell" and len(parts) > 1:
            node.class_name = class_from_name(parts[-2]) or ""
        path = ".".join(part for part in parts if part not in _PLUMBING)
        _add_vars(collector, group, path, node, "_reverse" if "backward_layer" in parts else "")


def _walk_layer(collector: _Collector, node: LayerNode, group: h5py.Group | None, path: str, suffix: str = "") -> None:
    if not isinstance(group, h5py.Group):
        return
    if node.children is not None:
        layers = container(group)
        for child in node.children if layers is not None else ():
            _walk_layer(collector, child, layers.get(child.key), _join(path, child.name))
        return
    if is_wrapper(node) and node.wrapped is not None:
        if "forward_layer" in group:  # Bidirectional
            _walk_layer(collector, node.wrapped, group.get("forward_layer"), path, suffix)
            _walk_layer(collector, node.backward or node.wrapped, group.get("backward_layer"), path, "_reverse")
        else:
            _walk_layer(collector, node.wrapped, group.get("layer"), path, suffix)
        return
    _add_vars(collector, group, path, node, suffix)
    cell_group = group.get("cell")
    if isinstance(cell_group, h5py.Group):  # LSTM/GRU/SimpleRNN name their cell's layout; RNN(cell=...) has it in config
        _add_vars(collector, cell_group, path, node.cell if node.cell is not None else node, suffix)


def _add_vars(collector: _Collector, group: h5py.Group, path: str, node: LayerNode, suffix: str) -> None:
    variables = group.get("vars")
    if not isinstance(variables, h5py.Group):
        return
    datasets = [variables[key] for key in sorted(variables, key=natural_key) if isinstance(variables[key], h5py.Dataset)]
    roles = positional_roles(node.class_name, node.config, len(datasets), node.from_config)
    for position, dataset in enumerate(datasets):
        collector.add(dataset, path, node.class_name, roles[position] if roles else f"vars.{position}", suffix)


def legacy_variables(file: h5py.File, root: LayerNode | None) -> list[KerasVariable]:
    """The variables of a legacy .h5 file in ``layer_names`` order; classes from ``root`` (the
    ``model_config`` attribute) or, for weights-only files, from the default layer names."""
    weights = file["model_weights"] if isinstance(file.get("model_weights"), h5py.Group) else file
    collector = _Collector()
    for layer_name in _names(weights.attrs.get("layer_names")):
        group = weights.get(layer_name)
        if not isinstance(group, h5py.Group):
            continue
        node = root.find(layer_name) if root is not None else None
        for weight_name in _names(group.attrs.get("weight_names")):
            dataset = group.get(weight_name)
            if isinstance(dataset, h5py.Dataset):
                path, class_name, suffix = _legacy_owner(layer_name, node, weight_name)
                collector.add(dataset, path, class_name, role_from_name(weight_name), suffix)
    return collector.variables + collector.unclaimed(file)


def _legacy_owner(layer_name: str, node: LayerNode | None, weight_name: str) -> tuple[str, str, str]:
    """The torch path, layer class and direction suffix of a legacy weight: the weight name's parts
    (``block/inner_a/kernel``, ``bidirectional/backward_lstm/lstm_cell/kernel:0``) are followed down
    the config's nested models and wrappers; parts the config does not name (scopes of layers without
    a config, e.g. ``bert/encoder/layer_._0``) stay in the path, a recurrent cell's or a direction's
    scope does not."""
    parts = weight_name.split("/")[:-1]
    if layer_name in parts:  # what comes before is the enclosing model's scope (Keras 3 prefixes a Sequential's name)
        parts = parts[parts.index(layer_name) + 1:]
    path, owner, suffix = layer_name, node, ""
    for part in parts:
        if part.startswith("backward_"):
            suffix = "_reverse"
        child = owner.find(part) if owner is not None else None
        if child is not None:
            if owner.children is not None:
                path = _join(path, child.name)
            owner = child
        elif not _is_scope(part) and (owner is None or part != owner.name):
            path = _join(path, part)
    while owner is not None and is_wrapper(owner) and owner.wrapped is not None:
        owner = owner.backward if suffix and owner.backward is not None else owner.wrapped
    if owner is not None and owner.cell is not None:
        owner = owner.cell
    class_name = owner.class_name if owner is not None and owner.children is None else ""
    if not class_name or is_wrapper(owner):
        guesses = [class_from_name(part) for part in reversed([layer_name, *parts])]
        class_name = next((guess for guess in guesses if guess is not None and guess not in WRAPPERS), class_name)
    return path, class_name, suffix


def _is_scope(part: str) -> bool:
    """A name scope Keras adds inside one layer: a recurrent cell's (``lstm_cell``) or a direction's."""
    return part.startswith(("forward_", "backward_")) or (class_from_name(part) or "").endswith("Cell")


def _names(attribute: object) -> list[str]:
    """An HDF5 string-list attribute (bytes in Keras 2 files, str in Keras 3's) as Python strings."""
    if attribute is None:
        return []
    values = attribute.tolist() if isinstance(attribute, np.ndarray) else list(attribute)
    return [value.decode() if isinstance(value, bytes) else str(value) for value in values]


def _join(path: str, leaf: str) -> str:
    return f"{path}.{leaf}" if path else leaf
