"""The served system: a shared base model + an adapter + a retriever + the prompt template.

It composes the behavior half (components) and the knowledge half (vectorstore), so it sits above
both (docs/architecture.md). Modules, one concern each:

- `types`: Answer, Citation, Usage (what a query returns)
- `generation`: batched generation, sampling settings, a prepared prompt
- `pool`: how an adapter meets its shared base (lanes, private copies, reference counts)
- `system`: System and load_system
- `stream`: an answer generated token by token
"""

from adaptflow.system.generation import Prepared, PromptTooLong, generate_texts, sampling_kwargs
from adaptflow.system.pool import BaseHandle, base_loads, shared_base
from adaptflow.system.stream import Stream
from adaptflow.system.system import System, load_system
from adaptflow.system.types import Answer, Citation, Usage

__all__ = ["Answer", "BaseHandle", "Citation", "Prepared", "PromptTooLong", "Stream", "System", "Usage",
           "base_loads", "generate_texts", "load_system", "sampling_kwargs", "shared_base"]
