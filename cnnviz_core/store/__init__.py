"""Dataset runs: attribution maps of a whole dataset in one resumable store
(Zarr arrays plus a CSV index), on one or several local worker processes."""

from .dataset_run import run_dataset
from .reader import StoredResults, open_results

__all__ = ["StoredResults", "open_results", "run_dataset"]
