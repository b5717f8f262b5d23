"""Run in a subprocess by tests/test_dataset_runs.py (not a test module).

    python dataset_run_child.py slow-run ADAPTER.pkl DATASET OUT CHUNK
        a dataset run of gradcam + saliency that sleeps after each chunk, so
        the test can kill it with SIGKILL half-way;
    python dataset_run_child.py rss DATASET OUT
        a gradcam run of an untrained digits net; prints the peak RSS (KiB)."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cnnviz_adapters.torch_adapter import TorchAdapter  # noqa: E402


class DyingAdapter(TorchAdapter):
    """A TorchAdapter whose replica kills its worker process on start (a crashed worker)."""

    def to(self, device):
        if multiprocessing.parent_process() is not None:
            os._exit(9)
        return super().to(device)


def dying_copy(adapter: TorchAdapter) -> DyingAdapter:
    dying = DyingAdapter.__new__(DyingAdapter)
    dying.__dict__.update(adapter.__dict__)
    return dying


def slow_run(adapter_path: str, dataset: str, out: str, chunk: str) -> None:
    from cnnviz_core import run_dataset
    from cnnviz_core.store import chunk_work

    finish = chunk_work.ChunkWorker.write_chunk

    def write_slowly(self, *args, **kwargs):
        counts = finish(self, *args, **kwargs)
        time.sleep(0.4)  # room for the parent's SIGKILL between chunks and inside the next one
        return counts

    chunk_work.ChunkWorker.write_chunk = write_slowly
    with open(adapter_path, "rb") as stream:
        adapter = pickle.load(stream)
    run_dataset(["gradcam", "saliency"], adapter, dataset, out=out, chunk_size=int(chunk), batch_size=4)


def rss(dataset: str, out: str) -> None:
    import torch

    from cnnviz_core import run_dataset
    from digits import CLASS_NAMES, DIGITS_CONFIG, DigitsNet

    torch.manual_seed(0)
    adapter = TorchAdapter(DigitsNet().eval(), "digits_untrained", DIGITS_CONFIG, labels=CLASS_NAMES)
    result = run_dataset(["gradcam"], adapter, dataset, out=out, chunk_size=100, batch_size=50)
    assert result.summary["ok"] == len(result), result.summary
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


if __name__ == "__main__":
    {"slow-run": slow_run, "rss": rss}[sys.argv[1]](*sys.argv[2:])
