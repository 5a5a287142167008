"""Scans on a real two-node Ray cluster (``ray start --head`` plus a second node on loopback):
planning from the safetensors index, results equal to the single-process scan, a worker process
killed mid-task, ``check --ray``, and the registry worker with ``--executor ray`` against a real
``mlflow server``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from deploy.local.ray_cluster import local_ray_cluster
from gate.cli.app import main
from gate.distributed.executor import TASK_OVERHEAD_BYTES, scan_on_ray
from gate.distributed.part import analyse_part
from gate.distributed.plan import plan_scan
from gate.scanning.fingerprint import weights_sha256
from gate.scanning.pipeline import scan
from gate.sources import open_source

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from llama_checkpoint import generate  # noqa: E402

PART_BYTES = 60_000  # several parts per shard of the small checkpoint below
DEADLINE = 300.0
TIMING = ("scan_seconds", "eigensolve_seconds")
GATE_ENV = {"WEIGHTGATE_WORKER_TOKEN": "worker-secret", "WEIGHTGATE_OVERRIDE_TOKEN": "override-secret",
            "MLFLOW_DISABLE_TELEMETRY": "true"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A Llama-shaped sharded float16 checkpoint (embeddings shard + 3 block shards), small."""
    return generate(tmp_path_factory.mktemp("llama") / "ckpt", blocks=3, hidden=64, ffn=160, vocab=256)


@pytest.fixture(scope="module")
def single(checkpoint):
    """The single-process scan and fingerprint: what every distributed run must reproduce."""
    with open_source(str(checkpoint)) as weights:
        result = scan(weights, device="cpu")
        assert result.weights_sha256 == weights_sha256(weights)  # the fingerprint of a separate read
        return result


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes of one CPU each; Unix socket paths need a short temp dir, hence not tmp_path."""
    import ray

    workdir = Path(tempfile.mkdtemp(prefix="wg-ray-"))
    try:
        with local_ray_cluster(workdir, nodes=2, cpus_per_node=1) as address:
            yield address
            ray.shutdown()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def scan_json(args: list[str]) -> dict:
    result = CliRunner().invoke(main, ["scan", *args, "--format", "json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    for key in TIMING:
        del payload["summary"][key]
    return payload


def test_plan_splits_shards_by_bytes_from_the_index(checkpoint):
    plan = plan_scan(str(checkpoint), part_bytes=PART_BYTES)
    weight_map = json.loads(checkpoint.read_text())["weight_map"]
    assert plan.tensor_names == frozenset(weight_map)
    named = [name for part in plan.parts for name in part.tensors]
    assert sorted(named) == sorted(weight_map)  # every tensor in exactly one part
    for shard in set(weight_map.values()):
        path = checkpoint.parent / shard
        parts = [part for part in plan.parts if part.location == str(path)]
        assert all(weight_map[name] == shard for part in parts for name in part.tensors)
        # The parts of a shard read its data section: file size minus the 8-byte length and the header.
        header_length = int.from_bytes(path.read_bytes()[:8], "little")
        assert sum(part.nbytes for part in parts) == path.stat().st_size - 8 - header_length
        assert all(part.nbytes <= PART_BYTES or len(part.tensors) == 1 for part in parts)
    assert len(plan.parts) > len(set(weight_map.values()))  # the block shards were split


def test_tasks_ask_for_a_gpu_only_where_the_cluster_has_one(checkpoint):
    from gate.distributed.executor import _check_feasible, _task_gpus, task_memory
    from gate.errors import GateInputError

    assert _task_gpus("auto", {"CPU": 16.0, "GPU": 8.0}) == 1
    assert _task_gpus("cuda", {"CPU": 16.0, "GPU": 1.0}) == 1
    assert _task_gpus("cpu", {"CPU": 16.0, "GPU": 8.0}) == 0
    assert _task_gpus("auto", {"CPU": 2.0}) == 0
    plan = plan_scan(str(checkpoint), part_bytes=PART_BYTES)
    largest = max(task_memory(part) for part in plan.parts)
    _check_feasible(plan, [{"Alive": True, "Resources": {"memory": largest}}])
    with pytest.raises(GateInputError, match="largest node of the Ray cluster offers"):
        _check_feasible(plan, [{"Alive": True, "Resources": {"memory": largest - 1}},
                               {"Alive": False, "Resources": {"memory": 10 * largest}}])


@pytest.mark.server
def test_scan_on_two_nodes_equals_the_single_process_scan(cluster, checkpoint):
    distributed = scan_json([str(checkpoint), "--ray", cluster])
    local = scan_json([str(checkpoint)])
    assert distributed == local
    assert len(local["layers"]) == 2 + 3 * 7


@pytest.mark.server
def test_tasks_spread_over_both_nodes_with_memory_from_their_part(cluster, checkpoint, single, tmp_path):
    record = tmp_path / "tasks"
    record.mkdir()

    def recording(part, options, **kwargs):
        import ray

        context = ray.get_runtime_context()
        resources = context.get_assigned_resources()
        (record / f"{os.getpid()}-{time.monotonic_ns()}.json").write_text(json.dumps(
            {"node": context.get_node_id(), "memory": resources.get("memory"), "nbytes": part.nbytes,
             "cpu": resources.get("CPU"), "gpu": resources.get("GPU", 0)}))
        return analyse_part(part, options, **kwargs)

    result = scan_on_ray(str(checkpoint), address=cluster, part_bytes=PART_BYTES, device="cpu", analyse=recording)
    tasks = [json.loads(p.read_text()) for p in record.iterdir()]
    assert len(tasks) == len(plan_scan(str(checkpoint), part_bytes=PART_BYTES).parts)
    assert len({task["node"] for task in tasks}) == 2
    assert all(task["memory"] == task["nbytes"] + TASK_OVERHEAD_BYTES for task in tasks)
    assert all(task["cpu"] == 1 and task["gpu"] == 0 for task in tasks)  # no GPU in this cluster
    assert_same_scan(result, single)


def assert_same_scan(result, expected) -> None:
    pd.testing.assert_frame_equal(result.layers, expected.layers, check_exact=True)
    assert {k: v for k, v in result.summary.items() if k not in TIMING} == \
        {k: v for k, v in expected.summary.items() if k not in TIMING}
    assert (result.weights_sha256, result.source, result.options) == \
        (expected.weights_sha256, expected.source, expected.options)


@pytest.mark.server
def test_a_worker_killed_mid_task_is_retried_with_identical_results(cluster, checkpoint, single, tmp_path):
    victim_tensor = "model.layers.1.mlp.down_proj.weight"
    release = tmp_path / "release"

    def stalling(part, options, **kwargs):
        """On the chosen part the first attempt announces its PID and waits to be killed."""
        if part.tensors and victim_tensor in part.tensors:
            earlier = list(tmp_path.glob("attempt-*"))
            (tmp_path / f"attempt-{os.getpid()}").write_text("")
            deadline = time.monotonic() + 600
            while not earlier and not release.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        return analyse_part(part, options, **kwargs)

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(scan_on_ray, str(checkpoint), address=cluster, part_bytes=PART_BYTES, device="cpu",
                             max_retries=2, analyse=stalling)
        deadline = time.monotonic() + DEADLINE
        while not list(tmp_path.glob("attempt-*")) and time.monotonic() < deadline:
            assert not future.done(), future.exception()
            time.sleep(0.2)
        [first] = tmp_path.glob("attempt-*")
        os.kill(int(first.name.removeprefix("attempt-")), signal.SIGKILL)
        result = future.result(timeout=DEADLINE)
        release.write_text("")  # only matters if the kill had missed
    attempts = sorted(tmp_path.glob("attempt-*"))
    assert len(attempts) == 2 and first in attempts  # Ray ran the part again, in another process
    assert_same_scan(result, single)


def check_json(checkpoint: Path, *extra: str) -> dict:
    result = CliRunner().invoke(main, ["check", str(checkpoint), "--format", "json", "--device", "cpu", *extra])
    assert result.exit_code in (0, 1), result.output
    payload = json.loads(result.stdout)
    return {key: payload[key] for key in ("decision", "rules", "summary", "weights_sha256", "source")}


@pytest.fixture(scope="module")
def local_decision(checkpoint) -> dict:
    return check_json(checkpoint)


@pytest.mark.server
def test_check_on_ray_decides_as_in_process(cluster, checkpoint, local_decision):
    assert check_json(checkpoint, "--ray", cluster) == local_decision


def test_without_ray_installed_ray_options_exit_2(checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    result = CliRunner().invoke(main, ["scan", str(checkpoint), "--ray"])
    assert result.exit_code == 2 and "pip install 'weightgate[ray]'" in result.stderr
    result = CliRunner().invoke(main, ["worker", "--tracking-uri", "http://127.0.0.1:9", "--executor", "ray"])
    assert result.exit_code == 2 and "pip install 'weightgate[ray]'" in result.stderr


@pytest.mark.server
def test_device_cuda_on_a_cluster_without_gpus_is_refused(cluster, checkpoint):
    from gate.errors import GateInputError

    # Whether the GPU exists is the cluster's matter, not the driver's: asked of the cluster, in resolve_device's words.
    with pytest.raises(GateInputError, match="device 'cuda' was requested, but the Ray cluster has no CUDA GPU"):
        scan_on_ray(str(checkpoint), address=cluster, device="cuda")


@pytest.mark.slow  # tens of seconds on 2 cores: make test runs it, make test-fast does not
def test_plain_scan_does_not_import_ray(checkpoint):
    code = ("import sys; from click.testing import CliRunner; from gate.cli.app import main; "
            f"r = CliRunner().invoke(main, ['scan', {str(checkpoint)!r}, '--device', 'cpu', '--format', 'json']); "
            "assert r.exit_code == 0, r.output; print('ray' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=DEADLINE)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == "False"


@pytest.mark.server
def test_registry_worker_with_ray_executor_decides_a_registered_version(cluster, checkpoint, single, local_decision,
                                                                         tmp_path_factory):
    from mlflow import MlflowClient

    from deploy.local.mlflow_server import mlflow_server

    workdir = tmp_path_factory.mktemp("ray-gate-server")
    with mlflow_server(workdir, ("--app-name", "weightgate"), env=GATE_ENV) as url:
        client = MlflowClient(url, url)
        run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
        client.log_artifacts(run.info.run_id, str(checkpoint.parent), "weights")  # index + shards
        client.create_registered_model("llama")
        version = client.create_model_version("llama", f"{run.info.artifact_uri}/weights", run_id=run.info.run_id).version
        worker = subprocess.run([sys.executable, "-m", "gate", "worker", "--tracking-uri", url, "--once",
                                 "--device", "cpu", "--executor", "ray", "--ray-address", cluster],
                                capture_output=True, text=True, timeout=600, env={**os.environ, **GATE_ENV})
        assert worker.returncode == 0, worker.stderr[-3000:]
        assert "processed 1 model version(s)" in worker.stdout
        tags = client.get_model_version("llama", version).tags
        status = {"approve": "approved", "warn": "warned", "block": "blocked"}[local_decision["decision"]]
        assert tags["gate.status"] == status, tags
        weights_sha256 = client.get_run(tags["gate.decision_run"]).data.params["weights_sha256"]
        assert weights_sha256 == single.weights_sha256 == local_decision["weights_sha256"]
        metrics = client.get_run(tags["gate.decision_run"]).data.metrics
        assert metrics["model.num_analysed"] == single.summary["num_analysed"]
        assert metrics["model.alpha"] == pytest.approx(single.summary["alpha"], rel=1e-12)
