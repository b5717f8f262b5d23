"""Dataset runs on a two-node Ray cluster on this one machine (--backend ray):
the work spreads over both nodes, a worker process killed with SIGKILL
mid-run is replaced by Ray and the run still writes every image exactly once,
and either way the store equals a local run bit for bit.

The cluster lives in a child process in a network namespace of its own
(loopback only, DESIGN §5) and a PID namespace (whatever Ray leaves behind
ends with it); it is started once for the module and serves every run."""

from __future__ import annotations

import json
import os
import pickle
import queue
import shutil
import subprocess
import sys
import tempfile
import threading

import numpy as np
import pytest

from cnnviz_core import open_results, run_dataset
from cnnviz_core.store import layout
from ray_cluster_child import METHODS, marking_copy

pytest.importorskip("ray")
HERE = os.path.dirname(os.path.abspath(__file__))
CHUNKS = 5  # 40 images in chunks of 8


class Cluster:
    """The child serving the cluster: one JSON request in, one reply out."""

    def __init__(self, scratch: str):
        self.log = open(os.path.join(scratch, "child.log"), "w+", encoding="utf-8")
        command = f"ip link set lo up && {sys.executable} {os.path.join(HERE, 'ray_cluster_child.py')} serve {scratch}"
        self.process = subprocess.Popen(["unshare", "-n", "-p", "-f", "--kill-child", "--mount-proc", "sh", "-c", command],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.startswith("REPLY "):
                self.replies.put(json.loads(line[len("REPLY "):]))
        self.replies.put({"error": "the cluster child ended"})

    def next_reply(self, timeout: float) -> dict:
        try:
            message = self.replies.get(timeout=timeout)
        except queue.Empty:
            message = {"error": f"no reply in {timeout:.0f} s"}
        if "error" in message:
            self.log.seek(0)
            pytest.fail(f"{message['error']}\n--- child's stderr:\n{self.log.read()[-3000:]}")
        return message

    def run(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self.next_reply(timeout=180)

    def stop(self) -> None:
        self.process.stdin.close()  # end of input: the child stops both nodes by PID
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()  # --kill-child: the namespace's processes end with it
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def cluster():
    if shutil.which("unshare") is None or shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("needs unshare and ip as root to give Ray a loopback-only network namespace")
    scratch = tempfile.mkdtemp(prefix="cnnviz-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    served = Cluster(scratch)  # starts while the fixtures below train and run locally
    try:
        yield served
    finally:
        served.stop()
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="module")
def ready(cluster) -> dict:
    return cluster.next_reply(timeout=300)  # the child gives up on the cluster after 240 s and says why


@pytest.fixture(scope="module")
def local(cluster, digits, digits_folder, tmp_path_factory):
    """The same run on the local backend, in this process."""
    return run_dataset(METHODS, digits, digits_folder, out=tmp_path_factory.mktemp("local") / "store", chunk_size=8, batch_size=4)


def assert_same_store(ran, local) -> None:
    assert [row["index"] for row in ran.rows] == list(range(40))  # every image exactly once
    assert ran.rows == local.rows
    for method in METHODS:
        assert np.array_equal(ran.maps(method)[:], local.maps(method)[:])


def test_the_run_spreads_over_both_nodes_and_equals_a_local_run(cluster, digits, digits_folder, local, ready, tmp_path):
    pickled = tmp_path / "adapter.pkl"
    pickled.write_bytes(pickle.dumps(digits))
    out = tmp_path / "store"
    reply = cluster.run(adapter=str(pickled), dataset=digits_folder, out=str(out))
    assert reply["summary"] == {"ok": 40, "skipped": 0, "error": 0}
    ran = open_results(out)
    execution = ran.record["execution"]
    assert execution["backend"] == "ray" and sorted(execution["nodes"]) == ready["nodes"]  # both nodes worked
    # the record names the node and worker process of every chunk
    assert sorted(execution["workers"], key=int) == [str(c) for c in range(CHUNKS)]
    assert {node for node, _ in execution["workers"].values()} == {0, 1}
    assert_same_store(ran, local)


def test_a_worker_killed_mid_run_is_replaced_and_every_image_is_written_once(cluster, digits, digits_folder, ready,
                                                                            local, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    pickled = tmp_path / "adapter.pkl"
    pickled.write_bytes(pickle.dumps(marking_copy(digits, str(marks), delay=0.4)))
    out = tmp_path / "store"
    reply = cluster.run(adapter=str(pickled), dataset=digits_folder, out=str(out), kill=True)
    assert "killed" in reply, "no worker was computing a chunk after the first chunk finished"
    assert 1 <= reply["done_before"] < CHUNKS  # killed mid-run, chunks still to do
    assert reply["killed"] in reply["started_before"]
    replacements = set(reply["started_after"]) - set(reply["started_before"])
    assert replacements  # Ray restarted the killed actor in a new process ...
    workers = open_results(out).record["execution"]["workers"]
    assert sorted(workers, key=int) == [str(c) for c in range(CHUNKS)]
    assert replacements & {pid for _, pid in workers.values()}  # ... which wrote the chunk the killed one had begun
    assert reply["summary"] == {"ok": 40, "skipped": 0, "error": 0}
    assert_same_store(open_results(out), local)
    assert layout.done_chunks(str(out)) == set(range(CHUNKS))
