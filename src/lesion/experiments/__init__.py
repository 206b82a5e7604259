"""Experiments as jobs in a content-addressed run directory: train, measure, resume."""

from lesion.experiments import beyond_jobs_t12 as _beyond_jobs_t12  # noqa: F401  (registers job kinds)
from lesion.experiments import beyond_jobs_t34 as _beyond_jobs_t34  # noqa: F401  (registers job kinds)
from lesion.experiments import followup_jobs as _followup_jobs  # noqa: F401  (registers job kinds)
from lesion.experiments import jobs as _jobs  # noqa: F401  (registers the job kinds)
from lesion.experiments.runner import KINDS, Job, kind, plan, run
from lesion.experiments.store import Store, job_key, write_json_atomic

__all__ = ["KINDS", "Job", "Store", "job_key", "kind", "plan", "run", "write_json_atomic"]
