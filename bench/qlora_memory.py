"""QLoRA (4-bit NF4 base) vs LoRA (fp32 base) on the built-in model: weight bytes and training peak RSS.

    .venv/bin/python -m bench.qlora_memory          # ~3-5 min on 2 CPU cores

The first QLoRA load quantizes the fp32 checkpoint and caches the NF4 copy under $ADAPTFLOW_HOME
(reported as `qlora_first_load_peak_mb`); the measured runs load that copy, as every later run does.
Each training run happens in its own subprocess (`--child lora|qlora`), so its peak RSS is its
own: load the base (quantized on load for QLoRA), train a few steps on the triage example, and
report `ru_maxrss` (peak) and VmRSS after loading (what stays resident). Weight bytes are the models' `get_memory_footprint()` after loading.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = 6


def child(method: str, batch_size: int = 8) -> dict:
    import bitsandbytes  # noqa: F401 - the runtime both arms pay, measured before loading
    import peft  # noqa: F401
    import transformers  # noqa: F401

    from components.models.load import load_model, load_tokenizer
    from components.spec import (
        BaseModelSpec,
        BehaviorDataSpec,
        BehaviorSpec,
        LoraSpec,
        QLoraSpec,
        QuantizationSpec,
        TrainingSpec,
    )
    from components.training.recipe import train

    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    base = BaseModelSpec(quantization=QuantizationSpec(bits=4) if method == "qlora" else None)
    model, tok = load_model(base), load_tokenizer(base)
    weight_bytes = model.get_memory_footprint()
    rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    resident_after_load = _resident_mb()
    if batch_size == 0:  # load only: the first QLoRA load quantizes from fp32 and writes the NF4 cache
        return {"rss_after_load_mb": rss_after_load, "resident_after_load_mb": resident_after_load}
    adapter = QLoraSpec() if method == "qlora" else LoraSpec()
    behavior = BehaviorSpec(
        data=BehaviorDataSpec(train=REPO / "specs/data/triage/train.jsonl", eval=REPO / "specs/data/triage/eval.jsonl"),
        adapter=adapter, training=TrainingSpec(max_steps=STEPS, batch_size=batch_size, max_seq_len=256, checkpoint_every=1000),
    )
    with tempfile.TemporaryDirectory() as tmp:
        record = train(model, tok, behavior, Path(tmp))
    return {"peak_device_mb": record.peak_device_memory_mb,  # on a GPU: what QLoRA saves (host RSS does not show it)
            "weight_bytes": weight_bytes, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_load_mb": rss_after_load, "rss_after_imports_mb": rss_imports,
            "resident_after_load_mb": resident_after_load}


def _resident_mb() -> float:
    """Current (not peak) RSS: what stays resident once loading is over."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(method: str, batch_size: int = 8) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.qlora_memory", "--child", method, str(batch_size)], cwd=REPO,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run() -> dict:
    """Batch 8 x 256 tokens (the triage example's setting) and micro-batch 1 (QLoRA's usual setting with
    gradient accumulation): on a 135M model activations and the runtime weigh as much as the weights."""
    cold = measure("qlora", 0)  # quantize on load and cache the NF4 checkpoint, as a first run does
    lora, qlora = measure("lora"), measure("qlora")
    lora1, qlora1 = measure("lora", 1), measure("qlora", 1)
    return {
        "qlora_weight_memory_ratio": round(qlora["weight_bytes"] / lora["weight_bytes"], 3),
        "qlora_peak_rss_ratio": round(qlora["peak_rss_mb"] / lora["peak_rss_mb"], 3),
        **({"qlora_peak_device_memory_ratio": round(qlora["peak_device_mb"] / lora["peak_device_mb"], 3)}
           if lora.get("peak_device_mb") else {}),
        "qlora_peak_rss_ratio_batch1": round(qlora1["peak_rss_mb"] / lora1["peak_rss_mb"], 3),
        "lora_weight_mb": round(lora["weight_bytes"] / 2**20, 1),
        "qlora_weight_mb": round(qlora["weight_bytes"] / 2**20, 1),
        "lora_peak_rss_mb": round(lora["peak_rss_mb"], 1),
        "qlora_peak_rss_mb": round(qlora["peak_rss_mb"], 1),
        "lora_peak_rss_batch1_mb": round(lora1["peak_rss_mb"], 1),
        "qlora_peak_rss_batch1_mb": round(qlora1["peak_rss_mb"], 1),
        "rss_after_imports_mb": round(qlora["rss_after_imports_mb"], 1),
        "lora_rss_after_load_mb": round(lora["rss_after_load_mb"], 1),
        "qlora_rss_after_load_mb": round(qlora["rss_after_load_mb"], 1),
        "qlora_first_load_peak_mb": round(cold["rss_after_load_mb"], 1),
        "lora_resident_after_load_mb": round(lora["resident_after_load_mb"], 1),
        "qlora_resident_after_load_mb": round(qlora["resident_after_load_mb"], 1),
    }


if __name__ == "__main__":
    if len(sys.argv) in (3, 4) and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]) if len(sys.argv) == 4 else 8)))
    else:
        print(json.dumps(run(), indent=2))
