"""Keras models (``.keras`` archives, Keras 3 ``.weights.h5``, legacy ``.h5``) read with h5py alone: no
TensorFlow or Keras import, and ``config.json`` read as data only."""
