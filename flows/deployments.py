"""The six deployments `adaptflow ui` serves: adapt and compare (a spec), evaluate, query and inspect
(NAME@REF), compose (a spec's compose: section).

`adapt`'s and `compare`'s `spec` parameter is a Literal of the specs found under ./specs when the
deployments are built, so the UI shows a dropdown (adapt defaults to the cheapest); `spec_path` takes
any other spec file instead. `query`'s `system` is likewise a dropdown of the NAME@alias values
registered when `adaptflow ui` started; `system_ref` takes any other. Every parameter's description
comes from the `Args:` section of its flow's docstring (Prefect parses it into the form).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Literal

import yaml
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.types.entrypoint import EntrypointType

from components.spec import SelectRule, adapter_methods
from flows.artifacts import arm_rows
from flows.cmd_compose import compose_flow
from flows.cmd_inspect import inspect_flow
from flows.compare import compare
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


def _adapt_ui(specs: list[str]):
    def adapt_ui(spec: str = cheapest_spec(specs), spec_path: str | None = None) -> str:
        """Run the main flow on a spec: train, index, evaluate, register, promote (what `adaptflow run` does).

        Args:
            spec: A spec from specs/. The default trains nothing, so it is the quickest to try; the others
                train an adapter first (minutes on a CPU).
            spec_path: Any other spec file (a path on the machine running `adaptflow ui`); when set, it is
                used instead of `spec`.
        """
        return adapt.fn(spec_path or spec)

    adapt_ui.__annotations__["spec"] = Literal[tuple(specs)]
    return flow(name="adapt", flow_run_name=spec_run_name, log_prints=True)(adapt_ui)


def _compare_ui(specs: list[str]):
    def compare_ui(spec: str = specs[0], spec_path: str | None = None, methods: list[str] | None = None,
                   select: str | None = None, max_parallel: int | None = None) -> dict:
        """Compare adapter methods on a spec: train and evaluate each, chart the trade-off, register the pick.

        Args:
            spec: A spec from specs/ with a behavior section (the methods differ only in the adapter).
            spec_path: Any other spec file; when set, it is used instead of `spec`.
            methods: Adapter methods to compare, e.g. lora, qlora, ia3, prompt_tuning, full (default: the
                spec's compare.methods, else its own method plus those five).
            select: How to pick the registered variant: best_score, or smallest_passing (fewest trainable
                parameters among those that pass the gates). Default: the spec's compare.select, else best_score.
            max_parallel: Variants trained at once (default: from free cores and memory).
        """
        return compare.fn(spec_path or spec, methods, None, select, max_parallel)

    method = Literal[adapter_methods()]  # type: ignore[valid-type]  # the registered methods, as of this call
    compare_ui.__annotations__ |= {"spec": Literal[tuple(specs)], "methods": list[method] | None,
                                   "select": SelectRule | None}
    return flow(name="compare", log_prints=True)(compare_ui)


@flow(name="evaluate", flow_run_name=system_run_name, log_prints=True)
def evaluate_registered(system: str) -> dict:
    """Re-run the evaluation of a registered system and show its table.

    Args:
        system: A registered system: NAME@vN or NAME@alias, e.g. lore-knowledge@production
            (`adaptflow registry list` shows them).
    """
    from adaptflow.system import load_system
    from components.evaluation.arms import arms_for, evaluate

    loaded = load_system(system)
    behavior, knowledge = loaded.method is not None, loaded.retriever is not None
    out = Path(tempfile.mkdtemp(prefix="adaptflow-eval-"))
    report = evaluate(loaded, loaded.spec, arms_for(behavior, knowledge), out)
    create_table_artifact(arm_rows(report), key="evaluate-" + loaded.spec.name, description=f"evaluation of {loaded.ref}")
    print((out / "report.md").read_text())
    return report["metrics"]


def _query_registered(systems: list[str]):
    def query_registered(system: str = systems[0] if systems else "lore-knowledge@production",
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
        cites = "\n".join(f"{c.n}. **{c.doc_id}**{f', {c.locator}' if c.locator else ''} — {c.title} (score {c.score:.3f}): {c.snippet}" for c in answer.citations)
        create_markdown_artifact(f"## {question}\n\n{answer.answer}\n\n### Citations\n{cites or '(none)'}\n",
                                 key="query-" + loaded_name(system), description=f"answer from {answer.system}")
        print(answer.answer)
        return answer.to_dict()

    if len(systems) > 1:  # a dropdown of what is registered; with one or none, a text field (one would be a const)
        query_registered.__annotations__["system"] = Literal[tuple(systems)]
    return flow(name="query", flow_run_name=system_run_name, log_prints=True)(query_registered)


def loaded_name(ref: str) -> str:
    return ref.split("@")[0]


@functools.cache
def ui_flows() -> dict:
    """The flows whose forms offer dropdowns, built on first use (not at import): `spec` lists the specs
    under ./specs, `system` the NAME@alias values registered now. The runner finds them by module
    attribute (`flows.deployments.adapt_ui`), which `__getattr__` below answers from here."""
    specs = discover_specs()
    return {"adapt_ui": _adapt_ui(specs), "compare_ui": _compare_ui(specs),
            "query_registered": _query_registered(registered_refs())}


def __getattr__(name: str):
    if name in ("adapt_ui", "compare_ui", "query_registered"):
        return ui_flows()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def all_deployments() -> list:
    """The deployments `adaptflow ui` serves. Module-path entrypoints: the runner re-imports flows.deployments
    from the installed package, whatever folder `adaptflow ui` was started in."""
    ui = ui_flows()
    module = {"entrypoint_type": EntrypointType.MODULE_PATH}
    return [
        ui["adapt_ui"].to_deployment(name="adapt", description="Run a spec end to end: train, index, evaluate, register",
                                     **module),
        evaluate_registered.to_deployment(name="evaluate", description="Re-evaluate a registered system", **module),
        ui["query_registered"].to_deployment(name="query", description="Ask a registered system a question", **module),
        ui["compare_ui"].to_deployment(name="compare", description="Train and compare adapter methods on a spec",
                                       **module),
        inspect_flow.to_deployment(name="inspect", description="Where a registered adapter's change lives", **module),
        compose_flow.to_deployment(name="compose", description="Compose registered LoRA systems (a spec's compose:)",
                                   **module),
    ]
