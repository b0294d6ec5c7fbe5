"""The three deployments the Prefect UI triggers: adapt (a spec), evaluate (NAME@REF), query.

`adapt`'s `spec` parameter is a Literal of the specs found under ./specs when the module is
imported, so the UI shows a dropdown; `spec_path` takes any other spec file instead.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.types.entrypoint import EntrypointType

from flows.artifacts import arm_rows
from flows.pipeline import adapt


def discover_specs(root: Path = Path("specs")) -> list[str]:
    return sorted(str(p) for p in root.glob("*.yaml")) or ["specs/example.yaml"]


SPECS = discover_specs()


def adapt_ui(spec: str = SPECS[0], spec_path: str | None = None) -> str:
    """Run the main flow on a spec from specs/ (dropdown) or on any spec file path."""
    return adapt.fn(spec_path or spec)


# The choice list is known only at import time; the runner imports this module attribute by name.
adapt_ui.__annotations__["spec"] = Literal[tuple(SPECS)]
adapt_ui = flow(name="adapt", log_prints=True)(adapt_ui)


@flow(name="evaluate", log_prints=True)
def evaluate_registered(system: str) -> dict:
    """Re-run the evaluation of a registered system (NAME@vN or NAME@alias) and show the table."""
    from components.evaluate import arms_for, evaluate
    from components.system import load_system

    loaded = load_system(system)
    behavior, knowledge = loaded.method is not None, loaded.retriever is not None
    out = Path(tempfile.mkdtemp(prefix="adaptflow-eval-"))
    report = evaluate(loaded, loaded.spec, arms_for(behavior, knowledge), out)
    create_table_artifact(arm_rows(report), key="evaluate-" + loaded.spec.name, description=f"evaluation of {loaded.ref}")
    print((out / "report.md").read_text())
    return report["metrics"]


@flow(name="query", log_prints=True)
def query_registered(system: str, question: str) -> dict:
    """Ask a registered system a question; the answer and its citations show as an artifact."""
    from components.system import load_system

    answer = load_system(system).query(question)
    cites = "\n".join(f"{c.n}. **{c.doc_id}** — {c.title} (score {c.score:.3f}): {c.snippet}" for c in answer.citations)
    create_markdown_artifact(f"## {question}\n\n{answer.answer}\n\n### Citations\n{cites or '(none)'}\n",
                             key="query-" + loaded_name(system), description=f"answer from {answer.system}")
    print(answer.answer)
    return answer.to_dict()


def loaded_name(ref: str) -> str:
    return ref.split("@")[0]


def all_deployments() -> list:
    # Module-path entrypoints: the runner re-imports flows.deployments from the installed package,
    # whatever folder `adaptflow ui` was started in.
    from flows.compare import deployment as compare_deployment  # it imports this module: import it late

    module = {"entrypoint_type": EntrypointType.MODULE_PATH}
    return [
        adapt_ui.to_deployment(name="adapt", description="Run a spec end to end: train, index, evaluate, register",
                               **module),
        evaluate_registered.to_deployment(name="evaluate", description="Re-evaluate a registered system", **module),
        query_registered.to_deployment(name="query", description="Ask a registered system a question", **module),
        compare_deployment(),
    ]
