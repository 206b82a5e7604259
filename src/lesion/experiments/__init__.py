"""Experiments as jobs in a content-addressed run directory: train, measure, resume; the studies of
``lesion reproduce`` (their jobs, figures and claims), the store, the runner and the job backends.

May import everything below it (``analyses``, ``roles``, ``training``, ``backends``, ...); only
``report``, ``serve`` and ``cli`` import it.
"""

from lesion.experiments import jobs as _jobs  # noqa: F401  (registers the job kinds)
from lesion.experiments import jobs_followups as _jobs_followups  # noqa: F401  (registers job kinds)
from lesion.experiments import jobs_replacements as _jobs_replacements  # noqa: F401  (registers job kinds)
from lesion.experiments import jobs_vit_grokking as _jobs_vit_grokking  # noqa: F401  (registers job kinds)
from lesion.experiments.runner import KINDS, Job, kind, plan, run
from lesion.experiments.store import Store, job_key, write_json_atomic

__all__ = ["KINDS", "Job", "Store", "job_key", "kind", "plan", "run", "write_json_atomic"]
