"""MLflow model directories (a folder with an ``MLmodel`` file): where the weights are, by flavor.

``MLmodel`` lists the flavors the model was logged with and, for each, where its files are. It is read
once (:meth:`MlflowModelDir.read`); :meth:`MlflowModelDir.weights` then names the file or folder that
holds the weights, or refuses with a message naming the model's flavors and what would make it
readable. README "MLflow flavors" lists the same, flavor by flavor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from gate.errors import GateInputError

MLMODEL = "MLmodel"
# Flavors whose weights are in a folder of their own, in the order a directory's flavor is chosen.
_FOLDER_FLAVORS = ("pytorch", "transformers", "sentence_transformers", "keras", "tensorflow")
_READ_FLAVORS_TEXT = ("pytorch, transformers, sentence_transformers, onnx, keras, sklearn (MLP estimators) and "
                     "tensorflow (Keras models)")
_PYFUNC = "python_function"
_PYTHON_MODEL_LOADER = "mlflow.pyfunc.model"  # the loader of mlflow.pyfunc.log_model(python_model=...)
_PYFUNC_ARTIFACTS = "artifacts"  # where mlflow.pyfunc copies log_model(artifacts={...})


@dataclass(frozen=True)
class MlflowModelDir:
    """An MLflow model directory and the flavors its ``MLmodel`` lists."""

    path: Path
    flavors: dict

    @classmethod
    def read(cls, path: Path) -> MlflowModelDir:
        try:
            document = yaml.safe_load((path / MLMODEL).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise GateInputError(f"{path / MLMODEL}: unreadable MLmodel file: {err}") from err
        flavors = document.get("flavors") if isinstance(document, dict) else None
        if not isinstance(flavors, dict):
            raise GateInputError(f"{path / MLMODEL}: not an MLmodel file (no 'flavors' mapping)")
        return cls(path, {name: conf if isinstance(conf, dict) else {} for name, conf in flavors.items()})

    def described(self) -> str:
        """``an MLflow model with the flavors pytorch, python_function``: what error messages say it is."""
        names = ", ".join(self.flavors) or "none"
        return f"an MLflow model with the flavor{'s' if len(self.flavors) > 1 else ''} {names}"

    def weights_dir(self) -> Path:
        """The folder holding the weights, from the flavor's own key (the sklearn flavor's weights
        are one file, named by :meth:`weights`); the directory itself where no flavor says."""
        flavors = self.flavors
        if "pytorch" in flavors:
            return self.path / flavors["pytorch"].get("model_data", "data")
        if "transformers" in flavors:
            flavor = flavors["transformers"]
            if "peft_adaptor" in flavor:  # mlflow.transformers saves a PEFT model as its adapter (+ base if local)
                return self.path / flavor["peft_adaptor"]
            return self.path / flavor.get("model_binary", "model")
        if "sentence_transformers" in flavors:  # the folder SentenceTransformer.save writes, named by pyfunc's data
            return self.path / flavors.get(_PYFUNC, {}).get("data", "model.sentence_transformer")
        if "keras" in flavors:  # mlflow.keras (MLflow 3): data/model.keras, or an exported SavedModel in data/model
            return self.path / flavors["keras"].get("data", "data")
        if "tensorflow" in flavors:  # a Keras model (data/) or a tf.Module SavedModel (saved_model_dir)
            flavor = flavors["tensorflow"]
            return self.path / flavor.get("saved_model_dir", flavor.get("data", "data"))
        return self.path

    def weights(self) -> Path:
        """The file or folder to read; a :class:`GateInputError` naming the flavors where none stores
        weights weightgate reads, or where the flavor's weights are not in the directory."""
        if "sklearn" in self.flavors:  # model.skops (the default), or model.pkl (cloudpickle, pickle)
            flavor = self.flavors["sklearn"]
            default = "model.skops" if flavor.get("serialization_format") == "skops" else "model.pkl"
            return self.path / flavor.get("pickled_model", default)
        if "transformers" in self.flavors:
            self._refuse_hub_reference(self.flavors["transformers"])
        if any(flavor in self.flavors for flavor in _FOLDER_FLAVORS):
            folder = self.weights_dir()
            if not folder.is_dir():
                raise GateInputError(f"{self.path}: {self.described()}, but its weights folder {folder.name}/ is "
                                     "not there; register the complete model directory that log_model wrote")
            return folder
        if "onnx" in self.flavors:  # model.onnx beside MLmodel (and its external-data files)
            data = self.flavors["onnx"].get("data")
            return self.path / data if isinstance(data, str) and (self.path / data).is_file() else self.path
        pyfunc = self.flavors.get(_PYFUNC, {})
        data = pyfunc.get("data")
        if isinstance(data, str) and (self.path / data).exists():  # pyfunc with a custom loader_module and its data
            return self.path / data
        if pyfunc.get(_PYFUNC_ARTIFACTS) and (self.path / _PYFUNC_ARTIFACTS).is_dir():
            return self.path / _PYFUNC_ARTIFACTS  # python_model logged with its weights as artifacts
        raise GateInputError(self._no_weights_message(pyfunc))

    def _refuse_hub_reference(self, flavor: dict) -> None:
        """mlflow.transformers with save_pretrained=False stores the hub repository's name, not its weights."""
        if "model_binary" in flavor or "peft_adaptor" in flavor or "source_model_name" not in flavor:
            return
        reference = f"{flavor['source_model_name']}@{flavor.get('source_model_revision', '?')}"
        raise GateInputError(
            f"{self.path}: {self.described()} logged with save_pretrained=False: it stores only a reference to "
            f"{reference}, not the weights; log it with save_pretrained=True, or scan that checkpoint's files")

    def _no_weights_message(self, pyfunc: dict) -> str:
        if set(self.flavors) == {_PYFUNC} and pyfunc.get("loader_module") == _PYTHON_MODEL_LOADER:
            python_model = pyfunc.get("python_model", "its Python code")
            return (f"{self.path}: pyfunc model with no weight files (flavor python_function, python_model "
                    f"{python_model}): log the model with a flavor that stores its weights (pytorch, transformers, "
                    "sentence_transformers, onnx, keras, sklearn), or log its weight files with it "
                    "(mlflow.pyfunc.log_model(..., artifacts={'weights': 'model.safetensors'})). weightgate does "
                    "not unpickle a python_model: that would run its code")
        return (f"{self.path}: {self.described()}, which weightgate does not read: it reads the weights of "
                f"MLflow's {_READ_FLAVORS_TEXT} flavors; log the model with one of them, or export it to ONNX "
                "(mlflow.onnx.log_model) and register that")


def mlflow_model_weights_dir(model_dir: Path) -> Path:
    """The folder holding the weights of an MLflow model directory (:meth:`MlflowModelDir.weights_dir`)."""
    return MlflowModelDir.read(model_dir).weights_dir()
