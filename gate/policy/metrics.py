"""The metrics a policy rule may name, by scope, and what the rules on them need.

Layer metrics are columns of the layer table (gate.scanning.result); model metrics are keys of the
scan summary (gate.scanning.summary). Each maps to the scan option that computes it (None: every
scan does). The policy schema (gate.policy.schema) checks rule metrics against these catalogues;
the evaluation (gate.policy.evaluate) reads how to judge them.
"""

from __future__ import annotations

from gate.vocabulary import WeightProblem

LAYER_METRICS: dict[str, str | None] = {
    "alpha": None, "alpha_weighted": None, "log_alpha_norm": None, "log_norm": None, "log_spectral_norm": None,
    "stable_rank": None, "entropy": None, "matrix_rank": None, "rank_loss": None, "near_zero_fraction": None,
    "num_pl_spikes": None, "D": None, "xmin": None, "lambda_max": None, "sigma": None, "mlh": None,
    "stable_rank_peer_ratio": None, "spectral_norm_peer_ratio": None,
    "num_spikes": "mp_fit", "mp_softrank": "mp_fit", "sigma_mp": "mp_fit",
    "num_traps": "randomize", "rand_distance": "randomize",
    # schema_version 2: the Marchenko-Pastur random-like test, the value grid (gate.metrics.value_grid) and the
    # baseline weights (see PAIR_METRICS)
    "random_like": None, "mp_ks": None, "mp_spike_mass": None, "mp_spikes": None, "value_levels": None,
    "coarse_grid": None, "grid_bits": None,
    "cosine_similarity": "baseline_weights", "relative_distance": "baseline_weights",
    "quantisation_error": "baseline_weights",
    # columns of LoRA adapter rows (gate.sources.lora), for policies on adapters or --base merges
    "lora_rank": None, "lora_scale": None, "lora_norm": None, "lora_stable_rank": None,
    "lora_stable_rank_ratio": None,
}
MODEL_METRICS: dict[str, str | None] = {
    "alpha": None, "alpha_weighted": None, "log_alpha_norm": None, "log_norm": None, "log_spectral_norm": None,
    "stable_rank": None, "mlh": None, "num_layers": None, "num_analysed": None, "num_skipped": None,
    "num_nonfinite": None, "num_degenerate": None, "num_over_trained": None, "num_under_trained": None,
    "fraction_alpha_in_2_4": None, "benford_zeros": None, "benford_nonfinite": None,
    "mp_softrank": "mp_fit", "random_like_fraction": None,
    "random_like_judged": None, "random_like_judged_share": None, "num_all_zero": None,
    "eic": "train_accuracy", "eic_scaled": "train_accuracy", "eic_sr": "train_accuracy",
}
METRICS_BY_SCOPE = {"layer": LAYER_METRICS, "model": MODEL_METRICS}

# Metrics a schema_version 1 policy may not name (README: 'Migrating from schema 1').
V2_METRICS_BY_SCOPE = {
    "layer": ("random_like", "mp_ks", "mp_spike_mass", "mp_spikes", "value_levels", "coarse_grid", "grid_bits",
              "cosine_similarity", "relative_distance", "quantisation_error"),
    "model": ("random_like_fraction", "random_like_judged", "random_like_judged_share", "num_all_zero"),
}
# Layer metrics computed from the weights of the model and its baseline together (gate.compare):
# rules on them need a baseline, like change conditions, and compare the value itself.
# quantisation_error is the relative distance of a layer that sits on an integer grid its baseline
# layer is not on (gate.policy.quantisation); other layers have none.
PAIR_METRICS = ("cosine_similarity", "relative_distance", "quantisation_error")
# Layer metrics read from the power-law fit: in schema_version 2, layer rules on them count only
# well-fitted layers (gate.metrics.fit_quality) unless they say ``fit: any``.
FIT_METRICS = ("alpha", "alpha_weighted", "log_alpha_norm", "D", "xmin", "num_pl_spikes", "sigma")
# Layer metrics with no verdict (NaN) on layers too small to judge (too few eigenvalues for the
# random-like test, too few weights to tell a value grid): rules leave those layers out.
UNJUDGED_WHEN_NAN = ("random_like", "mp_ks", "mp_spike_mass", "mp_spikes", "value_levels", "coarse_grid", "grid_bits")
# Model metrics that are a share of layers with a verdict in a layer column (the column named here):
# a rule on one weighs how much of the model was judged (min_judged_share) and is inconclusive below it.
FRACTION_METRICS = {"random_like_fraction": "random_like", "fraction_alpha_in_2_4": "alpha"}
# Model metrics read over the analysed layers (means, shares): layers with unusable weights are
# left out of them, and a rule on one lists those layers as not evaluable.
ANALYSED_LAYER_METRICS = ("alpha", "alpha_weighted", "log_alpha_norm", "log_norm", "log_spectral_norm",
                          "stable_rank", "mp_softrank", *FRACTION_METRICS)
# Model metrics that count layers with unusable weights (gate.scanning.tensor_pass): a rule on one
# names those layers and what is wrong with each; every other rule leaves them out as not evaluable.
LAYER_COUNT_METRICS = {"num_nonfinite": WeightProblem.NONFINITE, "num_all_zero": WeightProblem.ALL_ZERO}
