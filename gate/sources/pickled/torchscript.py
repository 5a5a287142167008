"""Which attributes of a TorchScript module are parameters and buffers, read from the archive's code.

``torch.jit.save`` pickles a script module's attributes flat (no ``_parameters`` dict); the class
definitions in the archive's ``code/`` folder list them (``__parameters__ = ["weight", "bias", ]``,
``__buffers__ = [...]``). Those files are parsed with :func:`ast.parse` and only these two list
literals are read: parsing builds a syntax tree and runs nothing (``torch.jit.load`` would compile
and run the code).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from gate.sources.pickled.constructors import BadPickle

_MAX_SOURCE = 16 << 20  # one code file; TorchScript sources of real models are kilobytes


@dataclass(frozen=True)
class ScriptClass:
    """A TorchScript module class: its parameter and buffer names, in declaration order."""

    parameters: tuple[str, ...]
    buffers: tuple[str, ...]


def script_classes(code: dict[str, bytes]) -> dict[str, ScriptClass]:
    """Qualified class name (``__torch__.torch.nn.modules.linear.Linear``) -> its parameters and buffers,
    for the module classes of a TorchScript archive's ``code/`` files (path relative to ``code/``)."""
    classes: dict[str, ScriptClass] = {}
    for path, source in code.items():
        if len(source) > _MAX_SOURCE:
            raise BadPickle(f"TorchScript code file {path} is larger than {_MAX_SOURCE} bytes")
        try:
            tree = ast.parse(source, filename=path)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
            raise BadPickle(f"TorchScript code file {path} does not parse: {err}") from None
        module = path.removesuffix(".py").replace("/", ".")
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                members = _name_lists(node)
                if "__parameters__" in members:
                    classes[f"{module}.{node.name}"] = ScriptClass(members["__parameters__"],
                                                                   members.get("__buffers__", ()))
    return classes


def _name_lists(node: ast.ClassDef) -> dict[str, tuple[str, ...]]:
    """``__parameters__``/``__buffers__`` assignments of a class body whose value is a list of strings."""
    found = {}
    for statement in node.body:
        if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1):
            continue
        target, value = statement.targets[0], statement.value
        if isinstance(target, ast.Name) and target.id in ("__parameters__", "__buffers__") \
                and isinstance(value, ast.List) and all(isinstance(e, ast.Constant) and isinstance(e.value, str)
                                                        for e in value.elts):
            found[target.id] = tuple(e.value for e in value.elts)
    return found
