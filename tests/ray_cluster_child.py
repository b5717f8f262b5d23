"""Run by tests/test_ray_cluster.py inside a network and PID namespace of its
own (not a test module):

    python ray_cluster_child.py serve SCRATCH

starts a two-node Ray cluster on 127.0.0.1 (one CPU per node, each node with
its own temp dir under SCRATCH, token auth with a token of this run), prints
``REPLY {"ready": ...}``, then answers one JSON request per stdin line with one
``REPLY`` line: a dataset run on the cluster, optionally with a worker process
killed (SIGKILL) half-way. On end of input it stops both nodes by PID."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from cnnviz_adapters.torch_adapter import TorchAdapter  # noqa: E402

PORT = "6391"
METHODS = ["gradcam", "saliency"]


class MarkingAdapter(TorchAdapter):
    """A TorchAdapter that leaves traces of the worker processes using it, in
    the folder ``marks``: ``started-PID`` when a replica is placed, ``busy-PID``
    while it computes a chunk, which lasts at least ``delay`` seconds (so a
    kill lands mid-chunk). The driver process (``driver``) leaves none."""

    marks: str = ""
    delay: float = 0.0
    driver: int = -1

    def to(self, device):
        if os.getpid() != self.driver:
            _touch(os.path.join(self.marks, f"started-{os.getpid()}"))
        return super().to(device)

    @contextlib.contextmanager
    def session(self):
        outermost = os.getpid() != self.driver and not getattr(self, "_busy", False)
        busy = os.path.join(self.marks, f"busy-{os.getpid()}")
        if outermost:
            self._busy = True
            _touch(busy)
            time.sleep(self.delay)
        try:
            with super().session() as adapter:
                yield adapter
        finally:
            if outermost:
                self._busy = False
                os.remove(busy)


def marking_copy(adapter: TorchAdapter, marks: str, delay: float) -> MarkingAdapter:
    marking = MarkingAdapter.__new__(MarkingAdapter)
    marking.__dict__.update(adapter.__dict__)
    marking.marks, marking.delay = marks, delay
    return marking


def _touch(path: str) -> None:
    with open(path, "w", encoding="utf-8"):
        pass


def _pids(marks: str, prefix: str) -> list[int]:
    return sorted(int(name[len(prefix):]) for name in os.listdir(marks) if name.startswith(prefix))


def kill_mid_run(out: str, marks: str, found: dict, deadline: float) -> None:
    """Once a chunk is finished (the run is under way), SIGKILL a worker
    process that is computing a chunk; note its PID and the workers alive."""
    from cnnviz_core.store import layout

    while time.monotonic() < deadline:
        busy = _pids(marks, "busy-") if layout.done_chunks(out) else []
        if busy:
            found.update(killed=busy[0], started_before=_pids(marks, "started-"),
                         done_before=len(layout.done_chunks(out)))
            os.kill(busy[0], signal.SIGKILL)
            return
        time.sleep(0.01)


def answer(request: dict) -> dict:
    from cnnviz_core import run_dataset

    with open(request["adapter"], "rb") as stream:
        adapter = pickle.load(stream)
    found: dict = {}
    killer = None
    if request.get("kill"):
        adapter.driver = os.getpid()
        killer = threading.Thread(target=kill_mid_run, args=(request["out"], adapter.marks, found, time.monotonic() + 120),
                                  daemon=True)
        killer.start()
    result = run_dataset(METHODS, adapter, request["dataset"], out=request["out"], chunk_size=8, batch_size=4, backend="ray")
    if killer is not None:
        killer.join(timeout=1)
        found["started_after"] = _pids(adapter.marks, "started-")
    return {"execution": result.record["execution"], "summary": result.summary, **found}


def reply(message: dict) -> None:
    print("REPLY " + json.dumps(message), flush=True)


def serve(scratch: str) -> None:
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    os.environ.update(env)
    ray_command = os.path.join(os.path.dirname(sys.executable), "ray")
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--block", "--disable-usage-stats"]
    nodes = [subprocess.Popen([ray_command, "start", "--head", "--port", PORT, "--temp-dir", os.path.join(scratch, "head"),
                               "--include-dashboard", "false", *common], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        import ray

        deadline = time.monotonic() + 240  # generous: a loaded machine starts Ray slowly
        while True:  # the head answers once its GCS is up
            try:
                ray.init(address=f"127.0.0.1:{PORT}", include_dashboard=False, log_to_driver=False)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        nodes.append(subprocess.Popen([ray_command, "start", "--address", f"127.0.0.1:{PORT}", "--temp-dir",
                                       os.path.join(scratch, "worker"), *common], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the second Ray node did not join")
            time.sleep(0.2)
        reply({"ready": True, "nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])})
        for line in sys.stdin:
            try:
                reply(answer(json.loads(line)))
            except Exception:  # noqa: BLE001 - the test shows it
                reply({"error": traceback.format_exc()})
        ray.shutdown()
    finally:
        for node in reversed(nodes):
            node.terminate()
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()


if __name__ == "__main__":
    {"serve": serve}[sys.argv[1]](*sys.argv[2:])
