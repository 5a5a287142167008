"""The decision run: one MLflow run per judged version in experiment ``weightgate``, holding the
evidence and every detail of the decision that the version's four tags leave out.

- tags: model, version, decision, worker, the reason line and inconclusive rules
  (:mod:`gate.vocabulary`'s ``RUN_*`` keys);
- params: the version's source, baseline and why, policy name and sha256, weights sha256, time and
  attempts (:meth:`mlflow_plugin.decision_record.DecisionRecord.run_params`), and the model URI;
- metrics: the scan summary as ``model.*``, and per-layer series ``layer.*`` with step = layer
  index (the UI charts them by depth);
- artifacts under ``weightgate/``: ``decision.json``, ``layers.csv``, ``report.html``, ESD charts.

The experiment is created with ``mlflow.experimentKind=custom_model_development``, so MLflow 3's UI
opens it in the model-training view rather than the GenAI one; an existing experiment without the
tag gets it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from gate import vocabulary as words
from gate.jsonvalues import metric_value
from gate.vocabulary import EXPERIMENT, EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, LayerStatus
from mlflow_plugin.service import checkpoints

LAYER_SERIES = ("alpha", "alpha_weighted", "log_spectral_norm", "stable_rank", "mlh")


def weightgate_experiment(client: MlflowClient) -> str:
    """The id of experiment ``weightgate``, created (or marked) as a model-training experiment."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return client.create_experiment(EXPERIMENT, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def log_decision_run(client: MlflowClient, version: ModelVersion, result, params: dict[str, str],
                     worker_id: str) -> tuple[str, str]:
    """Log the run of ``result`` (a :class:`gate.check.CheckResult`); returns (run id, experiment id)."""
    from gate.report.verdict import reason_text

    experiment_id = weightgate_experiment(client)
    fail_abandoned_runs(client, experiment_id, version)
    decision = result.decision
    run = client.create_run(experiment_id, run_name=f"{version.name} v{version.version}", tags={
        words.RUN_MODEL: version.name, words.RUN_VERSION: str(version.version), words.RUN_DECISION: decision.decision,
        words.RUN_WORKER: worker_id, words.RUN_REASON: words.fit_tag_value(reason_text(decision)),
        words.RUN_INCONCLUSIVE: ",".join(rule.rule_id for rule in decision.inconclusive_rules),
    })
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(f"model.{k}", v, now, 0) for k, v in _metric_values(result.scan.summary.items())]
    layers = result.scan.layers
    analysed = layers[layers["status"] == LayerStatus.OK]
    for column in LAYER_SERIES:
        if column in analysed.columns:
            metrics += [Metric(f"layer.{column}", value, now, int(step))
                        for step, value in _metric_values(zip(analysed["layer_id"], analysed[column]))]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])
    run_params = {**params, "model_uri": f"models:/{version.name}/{version.version}"}
    client.log_batch(run_id, params=[Param(key, value) for key, value in run_params.items()])
    checkpoints.reach("uploading")
    with tempfile.TemporaryDirectory() as scratch:
        from gate.policy.report import write_outputs
        from gate.report.html import write_report

        write_outputs(result, scratch)
        write_report(scratch, result.scan, decision, result.baseline_scan, pairs=result.pairs)
        client.log_artifacts(run_id, scratch, artifact_path="weightgate")
    client.set_terminated(run_id)
    return run_id, experiment_id


def note_on_run(client: MlflowClient, run_id: str, key: str, note: str) -> None:
    client.set_tag(run_id, key, words.fit_tag_value(note))


def fail_abandoned_runs(client: MlflowClient, experiment_id: str, version: ModelVersion) -> None:
    """Runs of this version still RUNNING belong to a worker that died (or an attempt that failed):
    this worker holds the claim now, so they are marked FAILED and only one run is FINISHED."""
    query = (f"tags.`{words.RUN_MODEL}` = '{version.name}' and tags.`{words.RUN_VERSION}` = '{version.version}'"
             " and attributes.status = 'RUNNING'")
    for run in client.search_runs([experiment_id], query, max_results=100):
        client.set_terminated(run.info.run_id, "FAILED")


def _metric_values(pairs: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, float]]:
    """(key, value) pairs whose value is a measurement (gate.jsonvalues.metric_value), as floats."""
    for key, value in pairs:
        number = metric_value(value)
        if number is not None:
            yield key, number

