"""Writes one Keras 3 model (torch backend, no TensorFlow) in the layouts tests/test_keras.py reads.

Run as a script in a subprocess, so that KERAS_BACKEND is set before Keras loads and the test process
itself never imports Keras: ``python tests/keras_writer.py OUT_DIR``. OUT_DIR receives

- ``model.keras`` (``model.save``), ``model.h5`` (Keras 3's legacy HDF5 writer), ``model.weights.h5``
  (``save_weights``) and ``mlflow_model/`` (``mlflow.keras.save_model``);
- ``weights.npz``: every variable as Keras holds it in memory, keyed by its path (``lstm/lstm_cell/kernel``),
  the reference the test builds its torch twin from;
- ``layers.json``: the model's layer names in ``model.layers`` order;
- ``probes.npz``: inputs and Keras's outputs of single layers (``lstm/in``, ``lstm/out``), which show
  that the test's torch twin computes what Keras computes, so its hand conversions are right;
- ``bf16.keras``, ``bf16.h5``: a small model with a bfloat16 Dense layer, and ``bf16_kernel.npy`` its
  kernel as float32;
- ``subclassed.keras``: a subclassed model, and ``subclassed.npz`` its kernels.

The model has every layer kind the reader maps (Dense, Conv1D/2D/3D, Conv2DTranspose, DepthwiseConv2D,
SeparableConv2D, LSTM, GRU, SimpleRNN, Bidirectional, TimeDistributed, Embedding, BatchNormalization,
LayerNormalization) and a Sequential nested in the functional model, and is trained for one step so
that the archive holds optimizer variables.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402


def build() -> keras.Model:
    keras.utils.set_random_seed(7)
    tokens = keras.Input((10,), dtype="int32", name="tokens")
    x = layers.Embedding(200, 32, name="emb")(tokens)
    x = layers.Conv1D(24, 3, padding="same", name="c1")(x)
    x = layers.TimeDistributed(layers.Dense(24), name="td")(x)
    x = layers.LSTM(20, return_sequences=True, name="lstm")(x)
    x = layers.Bidirectional(layers.LSTM(12, return_sequences=True), name="bi")(x)
    x = layers.SimpleRNN(16, return_sequences=True, name="rnn")(x)
    x = layers.GRU(16, name="gru")(x)
    block = keras.Sequential([layers.Dense(48, activation="relu", name="inner_a"), layers.Dense(32, name="inner_b")],
                             name="block")
    x = block(x)
    image = keras.Input((12, 12, 8), name="image")
    y = layers.Conv2D(16, 3, name="c2")(image)
    y = layers.BatchNormalization(name="bn")(y)
    y = layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(y)
    y = layers.SeparableConv2D(24, 3, name="sep")(y)
    y = layers.Conv2DTranspose(12, 3, name="ct")(y)
    y = layers.GlobalAveragePooling2D(name="pool2")(y)
    volume = keras.Input((6, 6, 6, 4), name="volume")
    z = layers.Conv3D(8, 2, name="c3")(volume)
    z = layers.GlobalAveragePooling3D(name="pool3")(z)
    out = layers.Dense(10, name="head")(layers.Concatenate(name="cat")([x, y, z]))
    out = layers.LayerNormalization(name="ln")(out)
    return keras.Model([tokens, image, volume], out, name="net")


def main(out_dir: Path) -> None:
    import mlflow.keras

    model = build()
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 200, (4, 10)), rng.random((4, 12, 12, 8)), rng.random((4, 6, 6, 6, 4))]
    model.fit(inputs, rng.random((4, 10)), epochs=1, verbose=0)
    model.save(out_dir / "model.keras")
    model.save(out_dir / "model.h5")
    model.save_weights(out_dir / "model.weights.h5")
    mlflow.keras.save_model(model, str(out_dir / "mlflow_model"))
    np.savez(out_dir / "weights.npz", **{w.path: keras.ops.convert_to_numpy(w.value) for w in model.weights})
    (out_dir / "layers.json").write_text(json.dumps([layer.name for layer in model.layers]))
    np.savez(out_dir / "probes.npz", **probes(model))
    mixed = keras.Sequential([keras.Input((16,)), layers.Dense(32, dtype="bfloat16", name="low"), layers.Dense(8, name="out")],
                             name="mixed")
    mixed.save(out_dir / "bf16.keras")
    mixed.save(out_dir / "bf16.h5")
    low = mixed.get_layer("low").kernel
    np.save(out_dir / "bf16_kernel.npy", keras.ops.convert_to_numpy(keras.ops.cast(low.value, "float32")))
    subclassed = Subclassed()
    subclassed(np.ones((1, 9, 9, 3), "float32"))
    subclassed.save(out_dir / "subclassed.keras")
    np.savez(out_dir / "subclassed.npz", conv=keras.ops.convert_to_numpy(subclassed.conv.kernel.value),
             **{f"block{k}": keras.ops.convert_to_numpy(layer.kernel.value) for k, layer in enumerate(subclassed.blocks)})


class Subclassed(keras.Model):
    """A subclassed model: its config lists no layers, its weights file names groups by attribute."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.conv = layers.Conv2D(8, 3)
        self.blocks = [layers.Dense(16), layers.Dense(12)]
        self.pool = layers.GlobalAveragePooling2D()

    def call(self, x):
        x = self.pool(self.conv(x))
        for block in self.blocks:
            x = block(x)
        return x


# Layer -> the shape of a probe input (batch first, channels last, as Keras takes them).
PROBE_SHAPES = {"c1": (2, 10, 32), "td": (2, 3, 24), "lstm": (2, 6, 24), "bi": (2, 6, 20), "rnn": (2, 6, 24),
                "gru": (2, 6, 16), "c2": (2, 6, 6, 8), "dw": (2, 7, 7, 16), "sep": (2, 7, 7, 32), "ct": (2, 5, 5, 24),
                "c3": (2, 4, 4, 4, 4), "block": (2, 16), "head": (2, 52)}


def probes(model: keras.Model) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    found = {}
    for name, shape in PROBE_SHAPES.items():
        x = rng.standard_normal(shape).astype("float32")
        found[f"{name}/in"] = x
        found[f"{name}/out"] = keras.ops.convert_to_numpy(model.get_layer(name)(x))
    return found


if __name__ == "__main__":
    main(Path(sys.argv[1]))
