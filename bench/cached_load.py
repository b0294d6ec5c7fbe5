"""The built-in model from the safetensors cache (hash-checked) vs from the GGUF file, same process.

    .venv/bin/python -m bench.cached_load

Both sides are timed after one untimed load has paid for importing torch, transformers and the
model classes (cProfile showed that import, ~16 s of the first load's 17 s, landing on whichever
side ran first), and after importing the `gguf` reader. The cached side is the median of three
loads, each with the hash check every load does; the GGUF side the median of two conversions.
"""

from __future__ import annotations

import json
import statistics
import time


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run() -> dict:
    import gguf  # noqa: F401 - the GGUF reader transformers uses, imported before timing
    from transformers import AutoModelForCausalLM

    from components.models.load import BUILTIN_MODELS, builtin_model_dir, gguf_file, load_model, resolve_model
    from components.spec import BaseModelSpec

    builtin_model_dir()  # make sure the cache exists: the comparison is a later load, not the first
    spec = BaseModelSpec()
    load_model(spec, resolve_model(spec, verify=True))  # untimed: imports and first-use setup
    cached = _timed(lambda: load_model(spec, resolve_model(spec, verify=True)), 3)

    with gguf_file(BUILTIN_MODELS[spec.id]) as source:
        from_gguf = _timed(
            lambda: AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype="float32"), 2
        )
    return {"cached_load_speedup": round(from_gguf / cached, 1), "cached_load_s": round(cached, 2),
            "gguf_load_s": round(from_gguf, 2)}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
