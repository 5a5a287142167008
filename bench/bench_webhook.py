"""Webhook acknowledgement under a burst: 100 signed ``model_version.created`` deliveries sent at
once to a real ``weightgate webhook-receiver`` process (werkzeug, threaded), which reads a real
plain ``mlflow server`` (sqlite). Each delivery names one of 100 registered versions that already
hold a decision, so the receiver's event thread reads each version from MLflow while the burst is
answered (the acknowledgement must not wait for that work: mlflow_plugin/service/webhook.py).

Reported per burst: the acknowledgement latency (send to answer) p50, p95 and max over the 100
deliveries, the answer codes, and the time until the receiver's queue was drained; then the same
100 delivery ids again (MLflow delivering again: acknowledged as duplicates, not queued).
Goal (issue 28): p95 under 200 ms.

    python bench/bench_webhook.py [--deliveries 100] [--bursts 3]

Writes bench/out/webhook.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from deploy.local.mlflow_server import free_port, mlflow_server

SECRET = "bench-webhook-secret"
ENV = {"MLFLOW_DISABLE_TELEMETRY": "true"}


def rest(url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read() or b"{}")


def register(url: str, count: int) -> None:
    """``count`` versions of one model, each already decided (the receiver reads it and moves on)."""
    rest(url, "/api/2.0/mlflow/registered-models/create", {"name": "burst"})
    for n in range(1, count + 1):
        rest(url, "/api/2.0/mlflow/model-versions/create", {"name": "burst", "source": f"s3://bench/burst/{n}"})
        rest(url, "/api/2.0/mlflow/model-versions/set-tag",
             {"name": "burst", "version": str(n), "key": "gate.status", "value": "approved"})


def deliver(port: int, delivery_id: str, version: int) -> tuple[float, int]:
    """One signed delivery, as MLflow sends it; returns (seconds to the answer, HTTP code)."""
    from mlflow.webhooks.delivery import _generate_hmac_signature

    text = json.dumps({"entity": "model_version", "action": "created",
                       "data": {"name": "burst", "version": str(version)}})
    now = str(int(time.time()))
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=text.encode(), method="POST", headers={
        "Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery_id, "X-MLflow-Timestamp": now,
        "X-MLflow-Signature": _generate_hmac_signature(SECRET, delivery_id, now, text)})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            code = response.status
    except urllib.error.HTTPError as refused:
        code = refused.code
    return time.perf_counter() - started, code


def queued(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=120) as response:
        return json.loads(response.read())["queued"]


def burst(port: int, prefix: str, count: int) -> dict:
    with ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(lambda n: deliver(port, f"{prefix}-{n}", n), range(1, count + 1)))
    started = time.perf_counter()
    while queued(port):
        time.sleep(0.05)
    times = sorted(seconds for seconds, _ in answers)
    codes: dict[str, int] = {}
    for _, code in answers:
        codes[str(code)] = codes.get(str(code), 0) + 1
    return {"p50_ms": round(1000 * statistics.median(times), 1),
            "p95_ms": round(1000 * times[max(0, int(round(0.95 * len(times))) - 1)], 1),
            "max_ms": round(1000 * times[-1], 1), "codes": codes,
            "queue_drained_after_s": round(time.perf_counter() - started, 2)}


def wait_listening(port: int, receiver: subprocess.Popen, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if receiver.poll() is not None:
            raise RuntimeError(f"the receiver exited with {receiver.returncode}")
        try:
            queued(port)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the receiver did not listen within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deliveries", type=int, default=100)
    parser.add_argument("--bursts", type=int, default=3)
    args = parser.parse_args()
    results: dict = {"deliveries": args.deliveries, "bursts": []}
    with tempfile.TemporaryDirectory() as scratch, mlflow_server(Path(scratch), env=ENV) as url:
        register(url, args.deliveries)
        port = free_port()
        log = (Path(scratch) / "receiver.log").open("w")  # a file: an unread pipe would fill and stall its logging
        receiver = subprocess.Popen([sys.executable, "-m", "gate", "webhook-receiver", "--tracking-uri", url,
                                     "--secret", SECRET, "--port", str(port), "--device", "cpu",
                                     "--reconcile-seconds", "0"], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(port, receiver)
            for index in range(args.bursts):
                figures = burst(port, f"burst{index}", args.deliveries)
                results["bursts"].append(figures)
                print(f"burst {index}: {figures}", flush=True)
            results["repeated"] = burst(port, "burst0", args.deliveries)
            print(f"same delivery ids again: {results['repeated']}", flush=True)
        finally:
            receiver.terminate()
            receiver.wait(timeout=300)
            log.close()
    Path("bench/out").mkdir(parents=True, exist_ok=True)
    Path("bench/out/webhook.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
