"""Switching between two LoRA systems on one shared base vs reloading base + adapter, same process.

    .venv/bin/python -m bench.adapter_swap

Two LoRA adapters (r=8 on q_proj/v_proj, random non-zero weights: what is measured is loading and
switching, not what they learned) are saved the way training saves them, then served the way
`adaptflow serve` serves them: two `System`s on the built-in model, which share one base copy.

- adapter switch: alternating between the systems, the time to make the other system's adapter
  the active one (the base's lock + `set_adapter`), which is what a request for another system
  pays before it generates. Its p50 over many alternations.
- base reload: what a server without sharing pays instead: load the base model from the
  safetensors cache and attach the adapter (`load_model` + `load_adapter`). Its p50 over a few loads.
- `adapter_swap_speedup` = base reload p50 / adapter switch p50.
- torch runs on one thread, as the FAISS benchmark does: on a machine shared with other work, two
  OpenMP threads that spin while waiting made one forward pass of the 135M model 3-5x slower here.
- As a check on the whole request path: p50 latency of short greedy queries that alternate between
  the systems vs the same system every time (the difference is what switching costs a request),
  and the number of base loads during all of it (must stay 1).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SWITCHES = 200
RELOADS = 5
QUERIES = 12
QUESTION = "Where is my parcel? It is a week late."


def make_adapters(spec, folder: Path) -> list[Path]:
    """Two saved LoRA adapters with different random weights (B is zero at init; perturb both A and B)."""
    import torch

    from components.methods.io import save_adapter
    from components.methods.registry import apply_method
    from components.models.load import load_model

    model = apply_method(load_model(spec.base_model), spec.behavior.adapter)
    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        with torch.no_grad():
            for _, param in model.named_parameters():
                if param.requires_grad:
                    param.copy_(torch.randn_like(param) * 0.05)
        out.append(save_adapter(model, spec.behavior.adapter, folder / f"adapter-{seed}"))
    return out


def task_spec(name: str):
    from components.spec import TaskSpec

    data = {"name": name, "goal": "behavior", "evaluation": {"max_new_tokens": 4},
            "behavior": {"data": {"train": "unused.jsonl"}, "adapter": {"method": "lora", "r": 8}}}
    return TaskSpec.model_validate(data, context={"check_exists": False})


def p50_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1000, 3)


def switch_times(systems: list) -> list[float]:
    times = []
    for i in range(SWITCHES):
        system = systems[i % 2]
        start = time.perf_counter()
        with system.handle.lock:
            system._model_for(True)
        times.append(time.perf_counter() - start)
    return times


def reload_times(spec, adapter_dir: Path) -> list[float]:
    from components.methods.io import load_adapter
    from components.models.load import load_model, resolve_model

    times = []
    for _ in range(RELOADS):
        start = time.perf_counter()
        model = load_adapter(load_model(spec.base_model, resolve_model(spec.base_model)), adapter_dir).eval()
        times.append(time.perf_counter() - start)
        del model
    return times


def query_times(systems: list) -> tuple[list[float], list[float]]:
    """(alternating, same-system) query latencies, measured in interleaved pairs so that load on a
    shared machine falls on both alike."""
    alternating, same = [], []
    for _ in range(QUERIES // 2):
        for out, pair in ((alternating, systems), (same, [systems[0], systems[0]])):
            for system in pair:
                start = time.perf_counter()
                system.query(QUESTION, max_new_tokens=4)
                out.append(time.perf_counter() - start)
    return alternating, same


def run() -> dict:
    import torch

    from adaptflow.system import System, base_loads

    torch.set_num_threads(1)

    spec_a, spec_b = task_spec("swap-a"), task_spec("swap-b")
    with tempfile.TemporaryDirectory(prefix="adapter-swap-") as tmp:
        adapters = make_adapters(spec_a, Path(tmp))
        loads = base_loads()
        systems = [System("swap-a@v1", spec_a, adapters[0], None), System("swap-b@v1", spec_b, adapters[1], None)]
        assert systems[0].handle is systems[1].handle, "two LoRA systems on one base must share it"
        [s.query(QUESTION, max_new_tokens=4) for s in systems]  # warm-up
        switches = switch_times(systems)
        alternating, same = query_times(systems)
        shared_loads = base_loads() - loads
        reloads = reload_times(spec_a, adapters[0])
    switch, reload = p50_ms(switches), p50_ms(reloads)
    return {
        "adapter_swap_speedup": round(reload / switch, 1),
        "adapter_switch_p50_ms": switch,
        "adapter_switch_p95_ms": round(sorted(switches)[int(0.95 * len(switches))] * 1000, 3),
        "base_reload_p50_ms": reload,
        "alternating_query_p50_ms": p50_ms(alternating),
        "same_system_query_p50_ms": p50_ms(same),
        "base_loads_while_switching": shared_loads,
    }


if __name__ == "__main__":
    result = run()
    print(json.dumps(result, indent=2))
    print(f"adapter_swap_speedup={result['adapter_swap_speedup']} adapter_switch_p50_ms={result['adapter_switch_p50_ms']} "
          f"base_reload_p50_ms={result['base_reload_p50_ms']}")
