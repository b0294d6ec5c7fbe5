"""Flow run names a person recognises in the Prefect UI: the spec's or the system's name."""

from __future__ import annotations

from pathlib import Path

import yaml


def _parameters() -> dict:
    from prefect.runtime import flow_run

    return dict(flow_run.parameters or {})


def spec_name(spec_path: str) -> str:
    """The spec's `name` (`lore-assistant`), else its file name without .yaml."""
    path = Path(str(spec_path))
    try:
        name = yaml.safe_load(path.read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        name = None  # the flow itself reports a bad spec; the name only labels the run
    return str(name) if isinstance(name, str) and name else path.stem


def spec_run_name() -> str:
    """An adapt run is named after its spec (`spec_path`, else the `spec` dropdown's choice)."""
    params = _parameters()
    return spec_name(str(params.get("spec_path") or params.get("spec") or "adapt.yaml"))


def system_run_name() -> str:
    """`lore-assistant@production` (evaluate, query)."""
    return str(_parameters().get("system") or "system")
