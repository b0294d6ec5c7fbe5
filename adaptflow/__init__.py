"""Adaptflow's public Python API: a thin, stable name over the packages that do the work.

    from adaptflow import load_system
    answer = load_system("lore-assistant@production").query("Who founded Lumen Dynamics?")
    print(answer.answer, [c.doc_id for c in answer.citations])

`components`, `vectorstore` and `flows` keep their generic names for the code inside the project;
importing through `adaptflow` does not collide with anyone else's `components` package name.
"""

from __future__ import annotations

from importlib import metadata

from components.registry import Registry, RegistryError
from components.specload import SpecError, load_spec
from components.system import Answer, Citation, System, load_system

__version__ = metadata.version("adaptflow")

__all__ = ["Answer", "Citation", "Registry", "RegistryError", "SpecError", "System", "load_spec", "load_system",
           "__version__"]
