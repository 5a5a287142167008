"""Logs and registers a small Keras 3 model (torch backend, no TensorFlow) with ``mlflow.keras.log_model``.

Run as a script in a subprocess, so that KERAS_BACKEND is set before Keras loads and the test process
never imports Keras: ``python tests/keras_flavor_logger.py TRACKING_URI REGISTERED_NAME``. The model has
two Dense layers named ``hidden`` (32 -> 64) and ``out`` (64 -> 16); tests/test_flavors.py checks that
the gate's decision run names them.
"""

from __future__ import annotations

import os
import sys
import warnings

os.environ["KERAS_BACKEND"] = "torch"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import keras  # noqa: E402
import mlflow  # noqa: E402
import mlflow.keras  # noqa: E402


def main(tracking_uri: str, registered_name: str) -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="relu", name="hidden"),
                              keras.layers.Dense(16, name="out")])
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with warnings.catch_warnings(), mlflow.start_run():
        warnings.simplefilter("ignore")
        mlflow.keras.log_model(model, name="model", registered_model_name=registered_name, pip_requirements=["keras"])


if __name__ == "__main__":
    main(*sys.argv[1:3])
