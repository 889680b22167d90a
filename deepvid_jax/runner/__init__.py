"""Work over whole datasets and machines: `run` (resumable Zarr dataset runs), `store` (a run's
identity, its teacher's fingerprint, creating and locking a store), `integrity` (opening a store
and checking every chunk against its checksum: `verify`), `report` (the HTML report of a store),
`explain_report` (the figures of `deepvid explain`) and `bench` (explanations/s, FLOPs and memory
of every explainer)."""

from deepvid_jax.runner.integrity import Damage, verify
from deepvid_jax.runner.run import RunConfig, RunError, explain_dataset

__all__ = ["Damage", "RunConfig", "RunError", "explain_dataset", "verify"]
