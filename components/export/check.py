"""How an export is checked: the adapted model as Adaptflow serves it (base + adapter, unmerged, fp32) on the
first evaluation prompts gives the logits and greedy answers every exported model is compared with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from components.export.source import Base, ExportError, Source, trained_system_prompt
from components.spec import TaskSpec

PROBES = 8  # evaluation prompts each export is checked on
MAX_ANSWER_TOKENS = 16
FALLBACK_PROBES = ["My order has not arrived yet and the tracking number does not work.",
                   "How do I change the email address on my account?"]
# (max |Δlogit| / max |logit|, share of greedy answers equal) an export must reach against the adapted model.
# merged fp32: float rounding of the merge; a quantized base: the served model runs the 4/8-bit kernels, the
# merge the dequantized weights (LLM.int8 also rounds activations); bf16 and f16 round every weight once.
# Quantized GGUF types are judged by their answers (what the issue asks); their logit drift is recorded, not
# bounded: q8_0 moved the tiny test model's logits by 5-11 % of their range, a real model's by far less.
TOLERANCES: dict[str, tuple[float | None, float]] = {
    "fp32": (1e-3, 0.95), "fp32-quantized-base": (2e-2, 0.95), "bf16": (5e-2, 0.9),
    "f16": (2e-2, 0.95), "q8_0": (None, 0.8), "q4_k_m": (None, 0.6)}


def probe_prompts(spec: TaskSpec, n: int = PROBES) -> list[list[dict]]:
    """The first `n` evaluation prompts (the spec's evaluation set or its behavior eval split); fixed questions
    with the training system prompt when the data files are gone."""
    from components.evaluation.arms import load_eval_items

    try:
        items = load_eval_items(spec)
    except (OSError, ValueError):
        items = []
    if items:
        return [list(item.messages) for item in items[:n]]
    system = trained_system_prompt(spec)
    head = [{"role": "system", "content": system}] if system else []
    return [[*head, {"role": "user", "content": q}] for q in FALLBACK_PROBES]


@dataclass
class Reference:
    """Logits and greedy answers of the adapted model on the probe prompts, to check each export against."""

    tokenizer: Any
    prompts: list[str]  # rendered with the chat template, generation prompt included
    max_new_tokens: int
    logits: list[torch.Tensor] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)

    def compare(self, answers: list[str], logits: list[torch.Tensor] | None, check: str, what: str) -> dict:
        """The numbers, or an ExportError when they miss `TOLERANCES[check]`."""
        tolerance, min_agreement = TOLERANCES[check]
        agree = sum(a == b for a, b in zip(self.answers, answers, strict=True))
        out: dict[str, Any] = {"compared": what, "prompts": len(self.prompts), "answers_equal": agree,
                               "agreement": round(agree / len(self.prompts), 4), "min_agreement": min_agreement}
        problems = []
        if logits is not None:
            scale = max(r.abs().max().item() for r in self.logits)
            drift = max((r - c).abs().max().item() for r, c in zip(self.logits, logits, strict=True))
            out |= {"max_logit_drift": round(drift, 6), "max_abs_logit": round(scale, 4),
                    "relative_logit_drift": round(drift / scale, 6),
                    "tolerance": f"{tolerance:g} x max|logit|" if tolerance else "recorded, not bounded"}
            if tolerance is not None and drift > tolerance * scale:
                problems.append(f"logits drift {drift:.4g} > {tolerance:g} x {scale:.3g}")
        if agree / len(self.prompts) < min_agreement:
            problems.append(f"{agree}/{len(self.prompts)} greedy answers equal, below {min_agreement:.0%}")
        out["answers"] = {"adapted": self.answers, "export": answers}
        if problems:
            raise ExportError(f"{what} did not verify against the adapted model: {'; '.join(problems)}; nothing was "
                              "written. Try --dtype fp32 or --gguf-type q8_0/f16, or report it with this line")
        return out


TAIL = 16  # prompt positions whose logits are compared (the last ones: the answer's first token among them)


@torch.no_grad()
def run_model(model, reference: Reference) -> tuple[list[torch.Tensor], list[str]]:
    """(logits of each prompt's last TAIL positions, greedy answers) of a transformers model."""
    model.eval()
    device = next(model.parameters()).device
    tok, logits, answers = reference.tokenizer, [], []
    for prompt in reference.prompts:
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        logits.append(model(input_ids=ids, use_cache=False).logits[0, -TAIL:].float().cpu())
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=reference.max_new_tokens, pad_token_id=tok.pad_token_id)
        answers.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return logits, answers


def build_reference(source: Source, base: Base) -> Reference:
    from components.methods.io import load_adapter
    from components.training.data import render_prompt

    tok = base.tokenizer
    ev = source.spec.evaluation
    max_new = min(ev.max_new_tokens if ev else MAX_ANSWER_TOKENS, MAX_ANSWER_TOKENS)
    reference = Reference(tok, [render_prompt(tok, m) for m in probe_prompts(source.spec)], max_new)
    adapted = load_adapter(base.load(), source.adapter_dir)
    reference.logits, reference.answers = run_model(adapted, reference)
    return reference


def lora_norms_check(adapter_dir: Path, lora_file: Path) -> dict:
    """‖B·A‖ of each module in the GGUF against peft's tensors: the converter permutes q/k rows for RoPE,
    which leaves the norm unchanged, so equal norms mean every module arrived whole."""
    from gguf import GGUFReader
    from safetensors.torch import load_file

    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    peft_norms = sorted((tensors[k.replace("lora_A", "lora_B")].double() @ tensors[k].double()).norm().item()
                        for k in tensors if ".lora_A." in k)
    reader = GGUFReader(lora_file)
    found = {t.name: torch.from_numpy(t.data.astype("float32")).double() for t in reader.tensors}
    gguf_norms = sorted((found[k[:-1] + "b"] @ found[k]).norm().item() for k in found if k.endswith(".lora_a"))
    if len(gguf_norms) != len(peft_norms):
        raise ExportError(f"{lora_file.name} holds {len(gguf_norms)} LoRA modules, the adapter {len(peft_norms)}; "
                          "report it with this line")
    worst = max(abs(a - b) / max(b, 1e-12) for a, b in zip(gguf_norms, peft_norms, strict=True))
    if worst > 1e-2:
        raise ExportError(f"{lora_file.name}: a module's ‖B·A‖ differs from the adapter's by {worst:.2%}; "
                          "report it with this line")
    return {"compared": "‖B·A‖ per module, GGUF LoRA vs adapter_model.safetensors", "modules": len(peft_norms),
            "max_relative_norm_diff": round(worst, 6)}
