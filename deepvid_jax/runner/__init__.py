"""Work over whole datasets and machines: `run` (resumable Zarr dataset runs), `report` (the HTML
report of a store) and `bench` (explanations/s, FLOPs and memory of every explainer)."""

from deepvid_jax.runner.run import RunConfig, RunError, explain_dataset

__all__ = ["RunConfig", "RunError", "explain_dataset"]
