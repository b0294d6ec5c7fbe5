"""`python -m flows.compare_child JOB.json`: one `compare` variant's missing stages, in a process of its own.

The parent (flows.compare) computed the stage keys and wrote them with the spec into JOB.json; the child
runs the train and eval stages under exactly those keys (its view of the code is the one that decided
what was missing), with no Prefect API, and prints training progress as PROGRESS lines on stdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from components.routing.route import route
from components.spec import TaskSpec
from flows.keys import store
from flows.pipeline import evaluate_arms, train_adapter
from flows.stages import done, run_stage

PROGRESS = "ADAPTFLOW_PROGRESS "  # a child's stdout line carrying training progress as JSON


class MissingIndexError(RuntimeError):
    """The variant needs the index stage, which the parent builds before it starts any child."""


def _print_progress(step: int, total: int, metrics: dict | None = None) -> None:
    loss = (metrics or {}).get("loss")
    print(PROGRESS + json.dumps({"step": step, "total": total, "loss": loss}), flush=True)


def child_main(job_file: str) -> None:
    """Train and evaluate one variant under the keys the parent computed."""
    job = json.loads(Path(job_file).read_text())
    spec, stage_keys = TaskSpec.model_validate(job["spec"]), job["keys"]
    decision = route(spec)
    indexed = done("index", stage_keys["index"]) if stage_keys["index"] else None
    if decision.knowledge and indexed is None:
        raise MissingIndexError(f"{spec.name}: the index stage is missing from {store().root}; "
                                "the compare flow builds it first")
    train_key, eval_key = stage_keys["train"], stage_keys["eval"]
    trained = run_stage("train", train_key, train_adapter.fn, spec, train_key, _print_progress)
    run_stage("eval", eval_key, evaluate_arms.fn, spec, decision, trained, indexed, eval_key)


if __name__ == "__main__":
    child_main(*sys.argv[1:2])
