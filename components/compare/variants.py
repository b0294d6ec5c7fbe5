"""Variant-spec algebra: one spec and a list of adapter overrides in, one trainable spec per variant out.

A variant is the spec with `behavior.adapter` replaced (and `base_model.quantization` derived where
the method needs it), named `<spec name>--<variant id>`. Pure: typed specs in, typed specs out.
See docs/compare.md for the rules in prose.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

from components.spec import (
    AdapterSpec,
    BaseModelSpec,
    LrFamily,
    MethodSet,
    QuantizationSpec,
    TaskSpec,
    adapter_class,
    adapter_methods,
    parse_adapter,
)

DEFAULT_METHODS = MethodSet(lambda cls: cls.compare_default)  # lora, qlora, ia3, prompt_tuning, full

# Learning rates differ by orders of magnitude between method families (full fine-tuning diverges at
# a LoRA rate; soft prompts barely move at one). A variant of another family than the spec's own
# method starts from its family's rate unless `compare.lr` names one; the report lists what was used.
LR_RATES: dict[LrFamily, float] = {"low-rank": 2.0e-4, "ia3": 1.0e-2, "prompt": 3.0e-2, "weights": 5.0e-5}
if set(LR_RATES) != set(get_args(LrFamily)):
    raise ImportError(f"components.spec.LrFamily is {get_args(LrFamily)} but LR_RATES has {tuple(LR_RATES)}; "
                      "give every family a starting rate")
LR_FAMILIES: dict[str, tuple[MethodSet, float]] = {  # family -> (its methods, from each spec class's lr_family; rate)
    family: (MethodSet(lambda cls, family=family: cls.lr_family == family), rate) for family, rate in LR_RATES.items()
}


def lr_family(method: str) -> LrFamily:
    return adapter_class(method).lr_family


MAX_NAME = 64  # TaskSpec.name's limit, which registry names of variants must also meet
MAX_ID = 40


class CompareError(ValueError):
    """A comparison that cannot be set up: the message names the spec field and the fix."""


@dataclass(frozen=True)
class Variant:
    id: str  # [a-z0-9-]; the registry name is `<spec name>--<id>`
    spec: TaskSpec  # the spec to train: name `<spec name>--<id>`, adapter and base model derived, no compare
    overrides: dict  # the adapter keys the user set, e.g. {"method": "lora", "r": 4}
    derived: tuple[str, ...] = ()  # defaults filled in for this variant, shown in the report


# --- expanding variants --------------------------------------------------------------------------


def requested_overrides(spec: TaskSpec, methods: Sequence[str] | None = None) -> list[AdapterSpec]:
    """`methods` (the CLI's --methods) when given; else compare.methods then compare.variants; else
    the spec's own method followed by DEFAULT_METHODS. Each is an adapter with only the user's keys set."""
    if methods:
        names = list(methods)
    elif spec.compare is not None and (spec.compare.methods or spec.compare.variants):
        names = list(spec.compare.methods)
    else:
        names = [spec.behavior.adapter.method, *DEFAULT_METHODS]
    out = [_method_override(name) for name in dict.fromkeys(names)]
    if not methods and spec.compare is not None:
        out += list(spec.compare.variants)
    return out


def _method_override(method: str) -> AdapterSpec:
    try:
        return parse_adapter({"method": method})
    except ValueError:
        raise CompareError(f"unknown method '{method}'; use one of {', '.join(adapter_methods())}") from None


def merge_adapter(own: AdapterSpec, override: AdapterSpec) -> AdapterSpec:
    """The override's keys on top of the spec's own adapter (same method) or of the method's defaults."""
    base = own if own.method == override.method else type(override)()
    return type(override).model_validate(base.model_dump() | override.model_dump(exclude_unset=True))


def variant_base_model(base: BaseModelSpec, method: str) -> tuple[BaseModelSpec, str | None]:
    """qlora gets a 4-bit base; full/selective lose quantization; other methods keep the spec's base."""
    quant = base.quantization
    traits = adapter_class(method)
    if traits.needs_quantized_base and (quant is None or quant.bits != 4):
        note = f"base_model.quantization: {{bits: 4}} ({method} is LoRA on a 4-bit base)"
        return base.model_copy(update={"quantization": QuantizationSpec(bits=4)}), note
    if traits.trains_base_weights and quant is not None:
        note = f"base_model.quantization: null ({method} trains base weights, which cannot be 4/8-bit)"
        return base.model_copy(update={"quantization": None}), note
    return base, None


def variant_id(override: AdapterSpec) -> str:
    """'lora', 'lora-r4', 'lora-r16-all-linear', 'prompt-tuning-nvt8': the method and the keys the user set."""
    parts = [override.method] + [
        _id_part(key, value)
        for key, value in override.model_dump(mode="json", exclude_unset=True, exclude={"method"}).items()
    ]
    text = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    if len(text) <= MAX_ID:
        return text
    digest = hashlib.sha256(json.dumps(override.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
    return f"{override.method.replace('_', '-')}-{digest[:8]}"


def _id_part(key: str, value: object) -> str:
    short = key if "_" not in key else "".join(word[0] for word in key.split("_"))
    if isinstance(value, bool):
        return short if value else f"no-{short}"
    if value is None:
        return f"no-{short}"
    if isinstance(value, int | float):
        return f"{short}{value}"
    if isinstance(value, list):
        return "-".join(str(v) for v in value)
    return str(value)


def expand_variants(spec: TaskSpec, methods: Sequence[str] | None = None) -> list[Variant]:
    """One `Variant` per requested adapter; two variants with the same resolved adapter are an error."""
    if spec.behavior is None:
        raise CompareError(f"spec '{spec.name}' has no `behavior:` section; compare varies behavior.adapter, so add one")
    variants: list[Variant] = []
    seen: dict[str, str] = {}
    bases = spec.compare.base_models if spec.compare is not None and spec.compare.base_models else [None]
    for base_id, override in ((b, o) for b in bases for o in requested_overrides(spec, methods)):
        variant = _variant(spec, override, base_id)
        fingerprint = json.dumps(
            [variant.spec.behavior.adapter.model_dump(mode="json"), variant.spec.base_model.model_dump(mode="json")],
            sort_keys=True,
        )
        if variant.id in {v.id for v in variants} or fingerprint in seen:
            twin = seen.get(fingerprint, variant.id)
            raise CompareError(
                f"compare variant {variant.overrides} resolves to the same adapter as '{twin}'; "
                "remove one of them from compare.methods / compare.variants (or --methods)"
            )
        seen[fingerprint] = variant.id
        variants.append(variant)
    return variants


def base_slug(base_id: str) -> str:
    """'HuggingFaceTB/SmolLM2-360M-Instruct' -> 'smollm2-360m-instruct' (a variant id prefix)."""
    return re.sub(r"[^a-z0-9]+", "-", str(base_id).rstrip("/").rsplit("/", 1)[-1].lower()).strip("-")[:24] or "base"


def _variant(spec: TaskSpec, override: AdapterSpec, base_id: str | None = None) -> Variant:
    vid = variant_id(override) if base_id is None else f"{base_slug(base_id)}-{variant_id(override)}"
    name = f"{spec.name}--{vid}"
    if len(name) > MAX_NAME:
        raise CompareError(
            f"variant name '{name}' is {len(name)} characters, over the {MAX_NAME} a registry name allows; "
            f"shorten the spec's `name` to at most {MAX_NAME - len(vid) - 2} characters"
        )
    adapter = merge_adapter(spec.behavior.adapter, override)
    own_base = spec.base_model if base_id is None else spec.base_model.model_copy(update={"id": base_id})
    base, note = variant_base_model(own_base, adapter.method)
    if base_id is not None:
        note = "; ".join(n for n in (f"base_model.id: {base_id} (compare.base_models)", note) if n)
    data = spec.model_dump(mode="json") | {"name": name, "compare": None, "base_model": base.model_dump(mode="json")}
    data["behavior"]["adapter"] = adapter.model_dump(mode="json")
    lr, lr_note = variant_lr(spec, adapter.method)
    data["behavior"]["training"]["lr"] = lr
    source = "behavior.adapter" if spec.behavior.adapter.method == adapter.method else f"{adapter.method}'s defaults"
    derived = tuple(n for n in [f"adapter keys not given come from {source}", note, lr_note] if n)
    return Variant(vid, TaskSpec.model_validate(data), override.model_dump(mode="json", exclude_unset=True), derived)


def variant_lr(spec: TaskSpec, method: str) -> tuple[float, str | None]:
    """(learning rate, note): compare.lr[method] if given; the spec's own rate within its method's family;
    otherwise the family's default, noted so the report says where the number came from."""
    own = spec.behavior.training.lr
    chosen = (spec.compare.lr if spec.compare is not None else {}).get(method)
    if chosen is not None:
        return chosen, f"training.lr: {chosen:g} (compare.lr.{method})"
    family = lr_family(method)
    if family == lr_family(spec.behavior.adapter.method):
        return own, None
    default = LR_FAMILIES[family][1]
    return default, (f"training.lr: {default:g} ({family} methods' default; the spec's {own:g} is for "
                     f"{spec.behavior.adapter.method}; set compare.lr.{method} to change it)")


def parallel_slots(n_variants: int, cpus: int, available_mb: float, per_variant_mb: float,
                   cores_per_variant: int = 4) -> int:
    """How many variants may train at once: enough cores and memory for each, at least one."""
    by_cpu = cpus // cores_per_variant
    by_memory = int(available_mb // per_variant_mb) if per_variant_mb > 0 else by_cpu
    return max(1, min(n_variants, by_cpu, by_memory))
