"""Run a scan's parts as Ray tasks and merge their results: the only module that imports Ray.

Each part is one task that asks for a GPU when the cluster has GPUs (a CPU otherwise) and for
memory sized from the bytes it reads; tasks are spread over the nodes (their reads too), and is retried by Ray when its worker process or node dies
(``max_retries``); errors raised by the analysis itself are not retried, they would repeat. The
driver holds the plan and the partial results only, never weights.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from gate.distributed.part import analyse_part
from gate.distributed.plan import DEFAULT_PART_BYTES, Part, ScanPlan, plan_scan
from gate.errors import GateInputError
from gate.options import ScanOptions, resolve_device
from gate.scanning.result import ScanResult

DEFAULT_MAX_RETRIES = 3
# Held by a task besides the bytes it reads: the spectrum batcher's budget for Gram matrices in
# flight (1 GiB, gate.solver.spectrum) and a worker process with torch loaded.
TASK_OVERHEAD_BYTES = 1536 * 2**20
INSTALL_HINT = "pip install 'weightgate[ray]'"


def scan_on_ray(source: str, options: ScanOptions | None = None, *, address: str | None = None,
                tracking_uri: str | None = None, allow_pickle: bool = False, part_bytes: int = DEFAULT_PART_BYTES,
                max_retries: int = DEFAULT_MAX_RETRIES, analyse: Callable[..., Any] = analyse_part,
                **changes: Any) -> ScanResult:
    """Scan ``source`` (a path every node sees, or an MLflow URI) on the Ray cluster at ``address``
    (``None``/``"auto"``: RAY_ADDRESS or the cluster started on this machine), with ``options``
    and keyword ``changes`` as :func:`gate.scanning.pipeline.scan` takes them.

    The result, fingerprint included, equals :func:`gate.scanning.pipeline.scan`'s but for timing.
    ``analyse`` runs each part (tests wrap it to stop a task midway).
    """
    import torch

    from gate.distributed.merge import merge_parts

    # Bad options fail before any cluster work; whether the device exists is the cluster's matter.
    options = ScanOptions.of(options, **changes)
    if not isinstance(source, (str, Path)):
        raise GateInputError(f"a Ray scan reads a path or an MLflow URI that every node can open, not a "
                             f"{type(source).__name__}; scan in-process instead")
    ray = _import_ray()
    started = time.perf_counter()
    plan = plan_scan(str(source), tracking_uri=tracking_uri, allow_pickle=allow_pickle, part_bytes=part_bytes)
    connect(address)
    gpus = _task_gpus(options.device, ray.cluster_resources())
    task_options = replace(options, device="cuda" if gpus else "cpu")
    _check_feasible(plan, ray.nodes())
    remote = ray.remote(_run_part)
    refs = [remote.options(num_cpus=1, num_gpus=gpus, scheduling_strategy="SPREAD", memory=task_memory(part),
                           max_retries=max_retries, retry_exceptions=False,
                           name=f"weightgate:{part.location.rsplit('/', 1)[-1]}")
            .remote(analyse, part, task_options, plan.tracking_uri, plan.allow_pickle)
            for part in plan.parts]
    results = _gather(ray, refs)
    return merge_parts(plan, results, task_options, torch.device(task_options.device),
                       time.perf_counter() - started)


def connect(address: str | None) -> None:
    """Join the Ray cluster once per process (later calls reuse the connection)."""
    ray = _import_ray()
    if ray.is_initialized():
        return
    try:
        ray.init(address=address or "auto", log_to_driver=False, logging_level=logging.WARNING,
                 configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise GateInputError(f"cannot connect to the Ray cluster at {address or 'auto'}: {err}; start one with "
                             "`ray start --head` or pass its address (--ray HOST:PORT)") from err


def task_memory(part: Part) -> int:
    """Bytes a part's task asks Ray for: what it reads, and the solver's working set."""
    return part.nbytes + TASK_OVERHEAD_BYTES


def _run_part(analyse: Callable[..., Any], part: Part, options: ScanOptions, tracking_uri: str | None,
              allow_pickle: bool) -> Any:
    """The body of a Ray task (module level, so workers import it rather than unpickle code)."""
    return analyse(part, options, tracking_uri=tracking_uri, allow_pickle=allow_pickle)


def _import_ray():
    try:
        import ray
    except ImportError as err:
        raise GateInputError(f"--ray needs Ray, which is not installed here: {INSTALL_HINT}") from err
    return ray


def _task_gpus(device: str, resources: dict[str, float]) -> int:
    """1 when tasks should ask for a GPU: the cluster has one and the device is auto or cuda[:N]
    (each task sees the one GPU Ray gives it)."""
    cluster_device = resolve_device(device, gpus=int(resources.get("GPU", 0)), where="the Ray cluster has")
    return 1 if cluster_device.type == "cuda" else 0


def _check_feasible(plan: ScanPlan, nodes: list[dict[str, Any]]) -> None:
    """A part no node has the memory for would wait forever: say so instead."""
    largest = max((node["Resources"].get("memory", 0) for node in nodes if node.get("Alive")), default=0)
    for part in plan.parts:
        if task_memory(part) > largest:
            raise GateInputError(
                f"{part.location}: a task for it needs {task_memory(part) / 2**30:.1f} GiB of memory, but the "
                f"largest node of the Ray cluster offers {largest / 2**30:.1f} GiB; use nodes with more memory "
                "or smaller shards")


def _gather(ray, refs: list) -> list:
    """The tasks' results in plan order; an analysis error reaches the caller as itself."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        for ref in refs:
            ray.cancel(ref)
        if isinstance(err.cause, GateInputError):
            raise err.cause from None
        raise
