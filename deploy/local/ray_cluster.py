"""A real multi-node Ray cluster on this machine (``ray start --head`` plus ``ray start --address``
nodes), for the tests and the 1-vs-2-node benchmark.

Each node runs ``ray start --block`` in its own process group with its own temp dir, free ports and
bounded memory, and is stopped by signalling that group: nothing else on the machine is touched
(``ray stop`` would end every Ray process of the user).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deploy.local.lane import allow_processes
from deploy.local.mlflow_server import free_port

STARTUP_SECONDS = 300.0  # a loaded 2-core machine takes tens of seconds per node


@contextmanager
def local_ray_cluster(workdir: Path, nodes: int = 2, cpus_per_node: int = 1, memory_bytes: int = 3 * 2**30,
                      object_store_bytes: int = 200 * 10**6) -> Iterator[str]:
    """Start ``nodes`` Ray nodes on loopback; yields the head's address (HOST:PORT) once every node
    has joined, and stops them all when the block ends."""
    started: list[subprocess.Popen] = []
    port = free_port()
    address = f"127.0.0.1:{port}"
    try:
        for number in range(nodes):
            role = ["--head", f"--port={port}", f"--ray-client-server-port={free_port()}",
                    "--include-dashboard=false"] if number == 0 else [f"--address={address}"]
            # Joining nodes retry until the head's GCS answers: all start at once.
            started.append(_start_node(workdir, number, role, cpus_per_node, memory_bytes, object_store_bytes))
        _wait_for_port(port, started[0], workdir)
        _wait_for_nodes(address, nodes, started, workdir)
        yield address
    finally:
        for process in reversed(started):
            _stop(process)


def _start_node(workdir: Path, number: int, role: list[str], cpus: int, memory_bytes: int,
                object_store_bytes: int) -> subprocess.Popen:
    allow_processes("a Ray node")
    # Unix socket paths live under the temp dir and must stay short (108 bytes): one letter per node.
    temp_dir = workdir / f"n{number}"
    temp_dir.mkdir(parents=True, exist_ok=True)
    command = [str(Path(sys.executable).with_name("ray")), "start", "--block", *role, "--node-ip-address=127.0.0.1",
               f"--num-cpus={cpus}", "--num-gpus=0", f"--memory={memory_bytes}",
               f"--object-store-memory={object_store_bytes}", f"--temp-dir={temp_dir}",
               f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with (workdir / f"node{number}.log").open("w") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def _wait_for_port(port: int, process: subprocess.Popen, workdir: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        _fail_if_exited(process, workdir)
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the Ray head did not listen on port {port} within {STARTUP_SECONDS} s")


def _wait_for_nodes(address: str, count: int, processes: list[subprocess.Popen], workdir: Path) -> None:
    """Wait, through a short-lived driver process, until ``count`` nodes are alive."""
    probe = ("import ray, sys, time; ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)\n"
             "deadline = time.monotonic() + float(sys.argv[3])\n"
             "while sum(1 for n in ray.nodes() if n['Alive']) < int(sys.argv[2]) and time.monotonic() < deadline:\n"
             "    time.sleep(0.5)\n"
             "print(sum(1 for n in ray.nodes() if n['Alive']))")
    result = subprocess.run([sys.executable, "-c", probe, address, str(count), str(STARTUP_SECONDS)],
                            capture_output=True, text=True, timeout=2 * STARTUP_SECONDS)
    for process in processes:
        _fail_if_exited(process, workdir)
    lines = result.stdout.split()
    alive = int(lines[-1]) if result.returncode == 0 and lines and lines[-1].isdigit() else 0
    if alive < count:
        raise RuntimeError(f"only {alive} of {count} Ray nodes joined within {STARTUP_SECONDS} s: {result.stderr[-2000:]}")


def _fail_if_exited(process: subprocess.Popen, workdir: Path) -> None:
    if process.poll() is not None:
        logs = "\n".join(p.read_text()[-2000:] for p in sorted(workdir.glob("node*.log")))
        raise RuntimeError(f"a Ray node exited with status {process.returncode}:\n{logs}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM ``ray start --block``, which then drains the node and ends its processes; SIGKILL
    its process group for what is left after a wide deadline. (Signalling the whole group at once
    would end the GCS before the node can drain through it, which then waits 30 s.)"""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
