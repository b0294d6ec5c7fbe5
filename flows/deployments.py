"""The deployments the Prefect UI triggers: adapt (a spec), evaluate (NAME@REF), query (and compare).

`adapt`'s `spec` parameter is a Literal of the specs found under ./specs when the module is
imported, so the UI shows a dropdown (defaulting to the cheapest); `spec_path` takes any other
spec file instead. `query`'s `system` is likewise a dropdown of the NAME@alias values registered
when `adaptflow ui` started; `system_ref` takes any other. Every parameter's description comes
from the `Args:` section of its flow's docstring (Prefect parses it into the form).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import yaml
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.types.entrypoint import EntrypointType

from flows.artifacts import arm_rows
from flows.names import spec_run_name, system_run_name
from flows.pipeline import adapt


def discover_specs(root: Path = Path("specs")) -> list[str]:
    return sorted(str(p) for p in root.glob("*.yaml")) or ["specs/example.yaml"]


def cheapest_spec(specs: list[str]) -> str:
    """The default a newcomer runs first: a spec that trains nothing (knowledge only) if there is one."""
    for path in specs:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and (data.get("goal") == "knowledge" or "behavior" not in data):
            return path
    return specs[0]


def registered_refs() -> list[str]:
    """NAME@alias for every alias in the registry when the UI starts (the query form's dropdown)."""
    from components.registry import Registry, RegistryError

    registry = Registry()
    try:
        return [f"{name}@{alias}" for name in registry.names() for alias in sorted(registry.aliases(name))]
    except (RegistryError, OSError):
        return []


SPECS = discover_specs()
DEFAULT_SPEC = cheapest_spec(SPECS)
SYSTEMS = registered_refs()


def adapt_ui(spec: str = DEFAULT_SPEC, spec_path: str | None = None) -> str:
    """Run the main flow on a spec: train, index, evaluate, register, promote (what `adaptflow run` does).

    Args:
        spec: A spec from specs/. The default trains nothing, so it is the quickest to try; the others
            train an adapter first (minutes on a CPU).
        spec_path: Any other spec file (a path on the machine running `adaptflow ui`); when set, it is
            used instead of `spec`.
    """
    return adapt.fn(spec_path or spec)


# The choice list is known only at import time; the runner imports this module attribute by name.
adapt_ui.__annotations__["spec"] = Literal[tuple(SPECS)]
adapt_ui = flow(name="adapt", flow_run_name=spec_run_name, log_prints=True)(adapt_ui)


@flow(name="evaluate", flow_run_name=system_run_name, log_prints=True)
def evaluate_registered(system: str) -> dict:
    """Re-run the evaluation of a registered system and show its table.

    Args:
        system: A registered system: NAME@vN or NAME@alias, e.g. lore-knowledge@production
            (`adaptflow registry list` shows them).
    """
    from adaptflow.system import load_system
    from components.evaluate import arms_for, evaluate

    loaded = load_system(system)
    behavior, knowledge = loaded.method is not None, loaded.retriever is not None
    out = Path(tempfile.mkdtemp(prefix="adaptflow-eval-"))
    report = evaluate(loaded, loaded.spec, arms_for(behavior, knowledge), out)
    create_table_artifact(arm_rows(report), key="evaluate-" + loaded.spec.name, description=f"evaluation of {loaded.ref}")
    print((out / "report.md").read_text())
    return report["metrics"]


def query_registered(system: str = SYSTEMS[0] if SYSTEMS else "lore-knowledge@production",
                     question: str = "Who founded the tidal turbine company Lumen Dynamics?",
                     system_ref: str | None = None) -> dict:
    """Ask a registered system a question; the answer and its citations show as an artifact.

    Args:
        system: A registered system, NAME@alias (the systems registered when `adaptflow ui` started).
        question: What to ask, e.g. "Who founded the tidal turbine company Lumen Dynamics?" for the
            lore examples.
        system_ref: Any other system, e.g. lore-assistant@v2 or one registered since the UI started;
            when set, it is used instead of `system`.
    """
    from adaptflow.system import load_system

    system = system_ref or system
    answer = load_system(system).query(question)
    cites = "\n".join(f"{c.n}. **{c.doc_id}** — {c.title} (score {c.score:.3f}): {c.snippet}" for c in answer.citations)
    create_markdown_artifact(f"## {question}\n\n{answer.answer}\n\n### Citations\n{cites or '(none)'}\n",
                             key="query-" + loaded_name(system), description=f"answer from {answer.system}")
    print(answer.answer)
    return answer.to_dict()


if len(SYSTEMS) > 1:  # a dropdown of what is registered; with one or none, a text field (one would be a const)
    query_registered.__annotations__["system"] = Literal[tuple(SYSTEMS)]
query_registered = flow(name="query", flow_run_name=system_run_name, log_prints=True)(query_registered)


def loaded_name(ref: str) -> str:
    return ref.split("@")[0]


def all_deployments() -> list:
    # Module-path entrypoints: the runner re-imports flows.deployments from the installed package,
    # whatever folder `adaptflow ui` was started in.
    from flows.cmd_compose import compose_flow
    from flows.cmd_inspect import inspect_flow
    from flows.compare import deployment as compare_deployment  # it imports this module: import it late

    module = {"entrypoint_type": EntrypointType.MODULE_PATH}
    return [
        adapt_ui.to_deployment(name="adapt", description="Run a spec end to end: train, index, evaluate, register",
                               **module),
        evaluate_registered.to_deployment(name="evaluate", description="Re-evaluate a registered system", **module),
        query_registered.to_deployment(name="query", description="Ask a registered system a question", **module),
        compare_deployment(),
        inspect_flow.to_deployment(name="inspect", description="Where a registered adapter's change lives", **module),
        compose_flow.to_deployment(name="compose", description="Compose registered LoRA systems (a spec's compose:)",
                                   **module),
    ]
