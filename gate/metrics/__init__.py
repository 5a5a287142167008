"""Per-layer metrics from a layer's weights and eigenvalues: WeightWatcher's spectral metrics,
Benford digits, the Marchenko-Pastur tests, fit quality, tail estimators and the value grid."""
