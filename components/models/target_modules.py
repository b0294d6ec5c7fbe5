"""Which layers an adapter wraps: `target_modules` (and IA3's `feedforward_modules`) resolved against the model.

A spec that leaves them unset gets the architecture's default, decided here once the model is known: peft's own
per-architecture table (the one `peft.LoraConfig(target_modules=None)` would read) keyed by `config.model_type`,
else, for an architecture peft does not list (phi3, smollm3, ...), the attention's query and value projections
found by name (a fused qkv layer when there is no separate pair). Names the spec sets are kept and checked here,
so a typo is an error naming the key, the closest layer names and the fix instead of peft's ValueError.
`all-linear` is left to peft, which wraps every linear layer but the output head; the layers it will wrap are
named here too, so `plan` shows them per architecture (the default of `knowledge.finetune.adapter`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

import peft
import torch
from peft.utils import constants as peft_tables

from components.spec import AdapterBase, HybridSpec

KeyPath = tuple[str | int, ...]
ADAPTER_KEY: KeyPath = ("behavior", "adapter")
SPEC = "the spec"  # the source of names the spec sets

# What peft can wrap (LoRA: all of these; IA3: the linear ones); transformers' GPT-2 `Conv1D` is a linear layer.
_WRAPPABLE = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
_ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)  # a path component of the attention block
_QUERY = re.compile(r"(q|query|wq)(_proj|_lin)?", re.IGNORECASE)
_VALUE = re.compile(r"(v|value|wv)(_proj|_lin)?", re.IGNORECASE)
_FUSED_QKV = re.compile(r".*(qkv|query_key_value|c_attn).*", re.IGNORECASE)
_MLP_OUT = re.compile(r"down_proj|fc2|fc_out|dense_4h_to_h|c_proj|w2|wo", re.IGNORECASE)  # outside attention


class TargetModulesError(ValueError):
    """A module name the model does not have, or an architecture with no default: names the spec key and the fix."""

    def __init__(self, loc: KeyPath, detail: str):
        self.loc, self.detail = loc, detail
        super().__init__(f"{dotted(loc)}: {detail}")


@dataclass(frozen=True)
class ModuleChoice:
    """The modules one adapter (or one hybrid part) wraps, and where the names came from."""

    loc: KeyPath  # the spec key of the adapter, e.g. ("behavior", "adapter")
    target_modules: list[str] | str
    feedforward_modules: list[str] | None  # IA3's; None for methods without them
    source: str  # "the spec", "peft's default for model_type 'gpt2'", "found by name: ..."
    layers: int  # how many of the model's layers target_modules selects
    feedforward_source: str | None = None  # "the spec" or the default's origin, with feedforward_modules
    selects: list[str] | None = None  # for all-linear: the names of the layers peft will wrap, e.g. [c_attn, c_fc]

    def derived(self) -> dict[str, str]:
        """The defaults this choice filled in, as `adaptflow plan` lists them: key path -> value (origin)."""
        out = {}
        if self.source != SPEC:
            out[f"{dotted(self.loc)}.target_modules"] = f"{self.shown()} ({self.source})"
        if self.feedforward_source not in (None, SPEC):
            out[f"{dotted(self.loc)}.feedforward_modules"] = (f"{_listed(self.feedforward_modules)} "
                                                               f"({self.feedforward_source})")
        return out

    def shown(self) -> str:
        """'[q_proj, v_proj]', or 'all-linear = [c_attn, c_proj, c_fc]' with the layers all-linear wraps."""
        named = _listed(self.target_modules)
        return named if self.selects is None else f"{named} = {_listed(self.selects)}"

    def to_dict(self) -> dict:
        out = {"key": dotted(self.loc), "target_modules": self.target_modules, "source": self.source,
               "layers": self.layers}
        if self.selects is not None:
            out["selects"] = self.selects
        if self.feedforward_modules is not None:
            out["feedforward_modules"] = self.feedforward_modules
        return out


def dotted(loc: KeyPath) -> str:
    return ".".join(str(p) for p in loc)  # as spec errors write key paths: behavior.adapter.parts.0.target_modules


def resolve_modules(adapter: AdapterBase, model, loc: KeyPath = ADAPTER_KEY) -> AdapterBase:
    """The adapter spec with its modules filled in for `model` (each hybrid part on its own); explicit names are
    kept, after checking that each matches a layer of the model."""
    if isinstance(adapter, HybridSpec):
        parts = [resolve_modules(p, model, (*loc, "parts", i)) for i, p in enumerate(adapter.parts)]
        return adapter.model_copy(update={"parts": parts})
    choice = choose_modules(adapter, model, loc)
    if choice is None:
        return adapter
    update: dict = {"target_modules": choice.target_modules}
    if choice.feedforward_modules is not None:
        update["feedforward_modules"] = choice.feedforward_modules
    return adapter.model_copy(update=update)


def module_choices(adapter: AdapterBase, model, loc: KeyPath = ADAPTER_KEY) -> list[ModuleChoice]:
    """Every module choice of the adapter (one per hybrid part with modules), for `adaptflow plan`."""
    if isinstance(adapter, HybridSpec):
        return [c for i, p in enumerate(adapter.parts) for c in module_choices(p, model, (*loc, "parts", i))]
    choice = choose_modules(adapter, model, loc)
    return [] if choice is None else [choice]


def choose_modules(adapter: AdapterBase, model, loc: KeyPath = ADAPTER_KEY) -> ModuleChoice | None:
    """The modules of a method with `target_modules` (None for the others: prompt learning, weights)."""
    fields = type(adapter).model_fields
    if "target_modules" not in fields:
        return None
    layers = wrappable_names(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if adapter.target_modules is not None:
        targets, source = adapter.target_modules, SPEC
    else:
        targets, source = _default_targets(adapter, model_type, layers, loc)
    _check_names(targets, layers, (*loc, "target_modules"), adapter, model_type)
    feedforward, ff_source = None, None
    if "feedforward_modules" in fields:
        feedforward = _feedforward(adapter, model_type, layers, targets, loc)
        ff_source = SPEC if adapter.feedforward_modules is not None else "the architecture's default among target_modules"
    if isinstance(targets, str):  # all-linear: what peft will wrap, named for plan
        linear = all_linear(model)
        return ModuleChoice(loc, targets, feedforward, source, len(linear), ff_source, shortest_names(linear, layers))
    count = sum(1 for n in layers if any(_matches(n, t) for t in targets))
    return ModuleChoice(loc, targets, feedforward, source, count, ff_source)


def all_linear(model) -> list[str]:
    """The layers peft's `all-linear` wraps, in model order: every linear layer (GPT-2's Conv1D included) but
    the output head, as peft's `_maybe_include_all_linear_layers` picks them on a model without adapters."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [n for n, m in model.named_modules()
            if (isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D") and m is not head]


# --- defaults -----------------------------------------------------------------------------------------


def peft_table(adapter: AdapterBase, kind: str = "TARGET") -> dict[str, list[str]]:
    """peft's per-architecture table for the adapter's `module_defaults` tuner (kind TARGET or FEEDFORWARD)."""
    tuner = (adapter.module_defaults or "").upper()
    table = getattr(peft_tables, f"TRANSFORMERS_MODELS_TO_{tuner}_{kind}_MODULES_MAPPING", None)
    if table is None:
        raise TypeError(f"{type(adapter).__name__}.module_defaults is {adapter.module_defaults!r}: peft "
                        f"{peft.__version__} has no TRANSFORMERS_MODELS_TO_{tuner}_{kind}_MODULES_MAPPING")
    return table


def _default_targets(adapter: AdapterBase, model_type: str | None, layers: list[str],
                     loc: KeyPath) -> tuple[list[str], str]:
    table = peft_table(adapter)
    if model_type in table:
        return list(table[model_type]), f"peft's default for model_type '{model_type}'"
    found, what = attention_qv(layers), "the attention's query/value layers"
    if found and "feedforward_modules" in type(adapter).model_fields:  # IA3 scales the MLP's output layer too
        found, what = found + [m for m in mlp_output(layers) if m not in found], what + " and the MLP's output layer"
    if found:
        return found, f"found by name: model_type '{model_type}' is not in peft {peft.__version__}'s table; {what}"
    raise TargetModulesError((*loc, "target_modules"), (
        f"model_type '{model_type}' has no default: it is not in peft {peft.__version__}'s table and no attention "
        f"query/value layer was found by name. Set target_modules to some of the model's layers: "
        f"{', '.join(_layer_list(layers))}; or `all-linear`"))


def _feedforward(adapter: AdapterBase, model_type: str | None, layers: list[str], targets: list[str] | str,
                 loc: KeyPath) -> list[str]:
    """IA3's feedforward_modules: the spec's (each one of target_modules), else the architecture's among them."""
    if adapter.feedforward_modules is not None:
        _check_names(adapter.feedforward_modules, layers, (*loc, "feedforward_modules"), adapter, model_type)
        outside = [m for m in adapter.feedforward_modules if not isinstance(targets, str) and m not in targets]
        if outside:
            raise TargetModulesError((*loc, "feedforward_modules"), (
                f"{_listed(outside)} {'is' if len(outside) == 1 else 'are'} not in target_modules {_listed(targets)}: "
                "IA3 scales a feedforward module's input only where it wraps the module; add them to target_modules "
                "or remove them from feedforward_modules"))
        return list(adapter.feedforward_modules)
    table = peft_table(adapter, "FEEDFORWARD")
    default = list(table[model_type]) if model_type in table else mlp_output(layers)
    return default if isinstance(targets, str) else [m for m in default if m in targets]


def attention_qv(layers: Iterable[str]) -> list[str]:
    """The attention's query and value projections, found by name; a fused qkv layer when there is no pair."""
    layers = list(layers)
    attention = [n for n in layers if any(_ATTENTION.search(p) for p in n.split(".")[:-1])]
    query = [n for n in attention if _QUERY.fullmatch(_leaf(n))]
    value = [n for n in attention if _VALUE.fullmatch(_leaf(n))]
    if query and value:
        return shortest_names(query, layers) + shortest_names(value, layers)
    return shortest_names([n for n in attention if _FUSED_QKV.fullmatch(_leaf(n))], layers)


def mlp_output(layers: Iterable[str]) -> list[str]:
    """The MLP's output (down) projection, found by name outside the attention block."""
    layers = list(layers)
    outside = [n for n in layers if not any(_ATTENTION.search(p) for p in n.split(".")[:-1])]
    return shortest_names([n for n in outside if _MLP_OUT.fullmatch(_leaf(n))], layers)


def shortest_names(selected: list[str], layers: list[str]) -> list[str]:
    """The shortest dotted suffixes that select exactly `selected` among `layers` (peft matches by suffix):
    'c_proj' is in GPT-2's attention and MLP, so its MLP output is 'mlp.c_proj'."""
    chosen, exact = set(selected), {}
    out: list[str] = []
    for name in selected:
        parts = name.split(".")
        for size in range(1, len(parts) + 1):
            suffix = ".".join(parts[-size:])
            if suffix not in exact:
                exact[suffix] = all(n in chosen for n in layers if _matches(n, suffix))
            if exact[suffix]:
                break
        if suffix not in out:
            out.append(suffix)
    return out


# --- checking the spec's names ------------------------------------------------------------------------


def wrappable_names(model) -> list[str]:
    """Full names of the layers peft can wrap, in model order."""
    return [n for n, m in model.named_modules() if isinstance(m, _WRAPPABLE) or type(m).__name__ == "Conv1D"]


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)  # peft's rule for a list of names


def _check_names(names: list[str] | str, layers: list[str], loc: KeyPath, adapter: AdapterBase,
                 model_type: str | None) -> None:
    if isinstance(names, str):  # all-linear: peft picks every linear layer but the output head
        return
    missing = [t for t in names if not any(_matches(n, t) for n in layers)]
    if not missing:
        return
    candidates = _layer_list(layers)
    close = {t: difflib.get_close_matches(t, candidates, n=2, cutoff=0.6) for t in missing}
    hint = "; ".join(f"{t!r}: {', '.join(c)}" for t, c in close.items() if c)
    hint = f" Closest to {hint}." if hint else ""
    raise TargetModulesError(loc, (
        f"{', '.join(repr(t) for t in missing)} {'matches' if len(missing) == 1 else 'match'} no layer of the base "
        f"model (model_type '{model_type}').{hint} Its layers: {', '.join(candidates)}. "
        f"Use names from that list{_default_hint(adapter, model_type, layers, loc)}"))


def _default_hint(adapter: AdapterBase, model_type: str | None, layers: list[str], loc: KeyPath) -> str:
    if loc[-1] != "target_modules":
        return ""
    try:
        default, _ = _default_targets(adapter, model_type, layers, loc)
    except TargetModulesError:
        return ", or `all-linear`"
    return f", or remove target_modules for this architecture's default {_listed(default)}"


def _layer_list(layers: list[str]) -> list[str]:
    """The layer names a spec can use, once per layer of the stack: 'q_proj', or 'mlp.c_proj' where the leaf
    repeats inside a block."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name in layers:
        groups.setdefault((_leaf(name), _within_block(name)), []).append(name)
    return sorted({suffix for group in groups.values() for suffix in shortest_names(group, layers)})


def _within_block(name: str) -> str:
    """The name inside its repeated block: 'model.layers.3.self_attn.q_proj' -> 'self_attn.q_proj'."""
    parts = name.split(".")
    digits = [i for i, p in enumerate(parts) if p.isdigit()]
    return ".".join(parts[digits[-1] + 1:]) if digits else name


def _listed(names: list[str] | str) -> str:
    return names if isinstance(names, str) else "[" + ", ".join(names) + "]"  # as the spec's YAML writes them


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]

