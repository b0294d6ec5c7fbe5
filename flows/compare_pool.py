"""`adaptflow compare --pool NAME`: each variant's missing stages run as a deployment run on a work pool.

Without a pool, flows/compare.py runs a variant's missing train and eval stages in a child process on
this machine (`--parallel N` of them at once). With `--pool NAME` (which sets ADAPTFLOW_COMPARE_POOL
for the compare flow), the same job (the variant's resolved spec and the stage keys the parent
computed) goes to the pool's `variant-stages/variant-stages` deployment instead, and the parent
follows that flow run's logs until it ends. The stages are written to the stage store the job names
(ADAPTFLOW_STAGES, a shared folder or an s3:// URL across machines); the parent then reads them
from there exactly as after a child process. Variants share nothing else: each run has its own process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from prefect import flow
from prefect.types.entrypoint import EntrypointType

POOL_ENV = "ADAPTFLOW_COMPARE_POOL"
DEPLOYMENT = "variant-stages/variant-stages"
SHARED_ENV = ("ADAPTFLOW_STAGES", "ADAPTFLOW_REGISTRY")
CHILD_MODULE = "flows.compare_child"  # `python -m flows.compare_child JOB.json`: one variant's missing stages


@flow(name="variant-stages", flow_run_name="{job[spec][name]}", log_prints=True)
def variant_stages_flow(job: dict) -> None:
    """One compare variant's missing train and eval stages, under the keys the compare flow computed.

    Args:
        job: {"spec": the variant's resolved spec, "keys": {"train", "eval", "index"}} (set by `adaptflow compare`).
    """
    with tempfile.TemporaryDirectory(prefix="adaptflow-variant-") as tmp:
        path = Path(tmp) / "job.json"
        path.write_text(json.dumps(job))
        # the compare child entry point, as a process of its own, as without a pool (and no import cycle)
        done = subprocess.run([sys.executable, "-m", CHILD_MODULE, str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    for line in done.stdout.splitlines():
        print(line)
    if done.returncode != 0:
        raise RuntimeError(f"{job['spec']['name']}: the stage process exited with {done.returncode} (its output is above)")


def deployment():
    return variant_stages_flow.to_deployment(name="variant-stages", description="One compare variant's stages "
                                             "(submitted by `adaptflow compare --pool`)",
                                             entrypoint_type=EntrypointType.MODULE_PATH)


def run_on_pool(pool: str, job: dict, threads: int | None) -> None:
    """Submit the job to the pool, print its logs as they come, raise VariantError unless it completes."""
    from flows import pool_runs as pools

    env = {k: os.environ[k] for k in SHARED_ENV if k in os.environ}
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    name = job["spec"]["name"]
    run = pools.submit(DEPLOYMENT, {"job": job}, pools.job_variables(pool, env, Path.cwd()))
    print(f"[{name}] stages submitted to pool {pool!r} as flow run {run.name} ({run.id})")
    state = pools.follow(run.id, lambda line: print(f"[{name}] {line}"))
    if not state.is_completed():
        raise pools.PoolError(f"{name}: flow run {run.name} on pool {pool!r} ended {state.name}: {state.message or ''}")
