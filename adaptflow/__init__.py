"""Adaptflow's public Python API: a thin, stable name over the packages that do the work.

    from adaptflow import load_system
    answer = load_system("lore-assistant@production").query("Who founded Lumen Dynamics?")
    print(answer.answer, [c.doc_id for c in answer.citations])

`components`, `vectorstore` and `flows` keep their generic names for the code inside the project;
importing through `adaptflow` does not collide with anyone else's `components` package name.

This package is also the layer that composes both halves (docs/architecture.md): `adaptflow.system`
(the served system), `adaptflow.compose` and `adaptflow.preflight`. It never imports `flows`.
The public names load on first use (PEP 562), so `import adaptflow.preflight` (every CLI start) does
not pay for torch.
"""

from __future__ import annotations

from importlib import metadata

__version__ = metadata.version("adaptflow")

__all__ = ["Answer", "Citation", "Registry", "RegistryError", "SpecError", "System", "load_spec", "load_system",
           "__version__"]


def __getattr__(name: str):
    if name in ("Registry", "RegistryError"):
        from components import registry

        return getattr(registry, name)
    if name in ("SpecError", "load_spec"):
        from components.spec import load as specload

        return getattr(specload, name)
    if name in ("Answer", "Citation", "System", "load_system"):
        from adaptflow import system

        return getattr(system, name)
    raise AttributeError(f"module 'adaptflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
