"""A Keras model's layer tree, read from its config (``config.json`` of a ``.keras`` archive, the
``model_config`` attribute of a legacy ``.h5``) as plain JSON data.

Only class names, layer names, a few layout flags (``use_bias``, ``scale``, ``center``) and the
nesting of layers are read. Nothing is deserialized: ``module``, ``registered_name`` and every other
entry that Keras would import or call stay unread strings, so a config naming ``os.system`` or a
custom module runs nothing here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import h5py

from gate.errors import GateInputError
from gate.sources.base import natural_key
from gate.sources.keras.roles import KNOWN_CLASSES, WRAPPERS, is_recurrent


@dataclass
class LayerNode:
    """One layer of the config: a model (``children``: its layers, in the model's order), a wrapper
    (``wrapped``, and a ``Bidirectional``'s ``backward``), a generic ``RNN``'s ``cell``, or a plain
    layer. ``key`` is the name Keras 3's weights file gives it in its parent's ``layers`` group."""

    name: str
    class_name: str
    config: dict
    key: str = ""
    children: list[LayerNode] | None = None
    wrapped: LayerNode | None = None
    backward: LayerNode | None = None
    cell: LayerNode | None = None
    from_config: bool = True

    def find(self, name: str) -> LayerNode | None:
        """The child, wrapped layer or cell called ``name`` (legacy .h5 weight names use layer names)."""
        for node in (*(self.children or ()), self.wrapped, self.backward, self.cell):
            if node is not None and node.name == name:
                return node
        return None


def snake_case(class_name: str) -> str:
    """Keras's ``naming.to_snake_case``: ``Conv2DTranspose`` -> ``conv2d_transpose``."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


_CLASS_BY_SNAKE = {snake_case(name): name for name in KNOWN_CLASSES}
_CLASS_BY_SNAKE.update({snake_case(f"{name}Cell"): f"{name}Cell" for name in KNOWN_CLASSES if is_recurrent(name)})


def class_from_name(name: str) -> str | None:
    """A layer class guessed from a default Keras name (``conv2d_3``, ``forward_lstm``, ``lstm_cell``):
    for files without a config, whose group and weight names are all there is."""
    stem = re.sub(r"_\d+$", "", name)
    stem = re.sub(r"^(forward|backward)_", "", stem)
    return _CLASS_BY_SNAKE.get(stem)


def parse_model_config(config: object, where: str) -> LayerNode:
    """The root of a model config; ``where`` names the file in errors."""
    root = _node(config, where)
    if root.children is None and root.wrapped is None:
        root.children = []  # a subclassed model: its weights are listed from the file alone
    return root


def _node(entry: object, where: str) -> LayerNode:
    if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
        raise GateInputError(f"{where}: not a Keras model config: a layer entry without a class_name string "
                             f"({str(entry)[:120]})")
    class_name = entry["class_name"]
    config = entry.get("config") if isinstance(entry.get("config"), dict) else {}
    name = config.get("name") if isinstance(config.get("name"), str) else entry.get("name")
    node = LayerNode(name if isinstance(name, str) else snake_case(class_name), class_name, config)
    if isinstance(config.get("layers"), list):
        node.children = [_node(layer, where) for layer in config["layers"]]
        _assign_keys(node.children)
    for attribute, key in (("wrapped", "layer"), ("backward", "backward_layer"), ("cell", "cell")):
        if isinstance(config.get(key), dict):
            setattr(node, attribute, _node(config[key], where))
    return node


def _assign_keys(children: list[LayerNode]) -> None:
    """Keras 3 names a container's entries by class, not by layer name (``saving_lib._save_container_state``):
    the snake-cased class, then ``_1``, ``_2`` ... for later layers of the same class."""
    used: dict[str, int] = {}
    for child in children:
        base = snake_case(child.class_name)
        if base in used:
            used[base] += 1
            child.key = f"{base}_{used[base]}"
        else:
            used[base] = 0
            child.key = base


def container(group: h5py.Group) -> h5py.Group | None:
    """A model group's list of layers: ``layers`` (Keras 3), ``_layer_checkpoint_dependencies`` (tf.keras
    2.13-2.15 .keras files)."""
    for name in ("layers", "_layer_checkpoint_dependencies"):
        found = group.get(name)
        if isinstance(found, h5py.Group):
            return found
    return None


def inferred_node(key: str, group: h5py.Group) -> LayerNode:
    """A layer node from a Keras 3 weights file alone (no config.json): the class from the group's
    name (Keras names groups after the class), the layer name from the ``vars`` group's ``name``
    attribute (written by recent Keras 3) or else the group's name. Layers of a model are taken in
    natural name order, which is not the model's forward order."""
    label = _vars_name(group)
    class_name = class_from_name(key) or (class_from_name(label) if label else None) or ""
    node = LayerNode(label or key, class_name, {}, key=key, from_config=False)
    layers = container(group)
    if layers is not None:
        node.children = [inferred_node(k, layers[k]) for k in sorted(layers, key=natural_key) if isinstance(layers[k], h5py.Group)]
    for attribute, sub in (("wrapped", "forward_layer"), ("backward", "backward_layer"), ("wrapped", "layer")):
        if isinstance(group.get(sub), h5py.Group):
            setattr(node, attribute, inferred_node(sub, group[sub]))
    if node.wrapped is not None and not node.class_name:
        node.class_name = "Bidirectional" if node.backward is not None else "TimeDistributed"
    return node


def is_wrapper(node: LayerNode) -> bool:
    return node.class_name in WRAPPERS or (node.wrapped is not None and node.children is None)


def _vars_name(group: h5py.Group) -> str | None:
    vars_group = group.get("vars")
    name = vars_group.attrs.get("name") if isinstance(vars_group, h5py.Group) else None
    return name.decode() if isinstance(name, bytes) else name if isinstance(name, str) else None
