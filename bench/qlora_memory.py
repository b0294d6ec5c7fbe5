"""QLoRA (4-bit NF4 base) vs LoRA (fp32 base) on the built-in model: weight bytes and training peak RSS.

    .venv/bin/python -m bench.qlora_memory          # ~3-5 min on 2 CPU cores

Each training run happens in its own subprocess (`--child lora|qlora`), so its peak RSS is its
own: load the base (quantized on load for QLoRA), train a few steps on the triage example, and
report `ru_maxrss`. Weight bytes are the models' `get_memory_footprint()` after loading.
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


def child(method: str) -> dict:
    from components.models import load_model, load_tokenizer
    from components.spec import (
        BaseModelSpec,
        BehaviorDataSpec,
        BehaviorSpec,
        LoraSpec,
        QLoraSpec,
        QuantizationSpec,
        TrainingSpec,
    )
    from components.train import train

    base = BaseModelSpec(quantization=QuantizationSpec(bits=4) if method == "qlora" else None)
    model, tok = load_model(base), load_tokenizer(base)
    weight_bytes = model.get_memory_footprint()
    rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    adapter = QLoraSpec() if method == "qlora" else LoraSpec()
    behavior = BehaviorSpec(
        data=BehaviorDataSpec(train=REPO / "specs/data/triage/train.jsonl", eval=REPO / "specs/data/triage/eval.jsonl"),
        adapter=adapter, training=TrainingSpec(max_steps=STEPS, batch_size=8, max_seq_len=256, checkpoint_every=1000),
    )
    with tempfile.TemporaryDirectory() as tmp:
        train(model, tok, behavior, Path(tmp))
    return {"weight_bytes": weight_bytes, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_load_mb": rss_after_load}


def measure(method: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.qlora_memory", "--child", method], cwd=REPO,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run() -> dict:
    lora, qlora = measure("lora"), measure("qlora")
    return {
        "qlora_weight_memory_ratio": round(qlora["weight_bytes"] / lora["weight_bytes"], 3),
        "qlora_peak_rss_ratio": round(qlora["peak_rss_mb"] / lora["peak_rss_mb"], 3),
        "lora_weight_mb": round(lora["weight_bytes"] / 2**20, 1),
        "qlora_weight_mb": round(qlora["weight_bytes"] / 2**20, 1),
        "lora_peak_rss_mb": round(lora["peak_rss_mb"], 1),
        "qlora_peak_rss_mb": round(qlora["peak_rss_mb"], 1),
        "qlora_rss_after_load_mb": round(qlora["rss_after_load_mb"], 1),
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
    else:
        print(json.dumps(run(), indent=2))
