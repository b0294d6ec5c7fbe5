"""The built-in model from the safetensors cache (hash-checked) vs from the GGUF file, same process.

    .venv/bin/python -m bench.cached_load
"""

from __future__ import annotations

import json
import time


def run() -> dict:
    from transformers import AutoModelForCausalLM

    from components.models import BUILTIN_MODELS, _gguf_path, builtin_model_dir, load_model, resolve_model
    from components.spec import BaseModelSpec

    builtin_model_dir()  # make sure the cache exists: the comparison is a later load, not the first
    start = time.perf_counter()
    spec = BaseModelSpec()
    load_model(spec, resolve_model(spec, verify=True))  # what every load does: hash check + load
    cached = time.perf_counter() - start

    package, filename = BUILTIN_MODELS[spec.id]
    gguf = _gguf_path(package, filename)
    start = time.perf_counter()
    AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    from_gguf = time.perf_counter() - start
    return {"cached_load_speedup": round(from_gguf / cached, 1), "cached_load_s": round(cached, 2),
            "gguf_load_s": round(from_gguf, 2)}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
