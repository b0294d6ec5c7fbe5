"""Adapter methods: one builder and one registration line per spec class.

This is the one place where peft keyword names appear, so a peft rename touches one file. A builder
turns a typed spec into either a `peft.PeftConfig` (the peft methods) or a `WeightSelection`
(selective, full: base parameters trained in place). `apply_method` attaches it; `components.methods.io`
writes and reads it back. Method-specific training hooks (AdaLoRA's rank allocation and orthogonal
regularisation, the virtual-token offset of prompt learning) live here too, so the training loop
stays generic.
"""

from __future__ import annotations

import functools
import inspect
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import (
    AdaLoraConfig,
    IA3Config,
    LoHaConfig,
    LoKrConfig,
    LoraConfig,
    PeftConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
    VeraConfig,
    get_peft_model,
)

from components.methods import hybrid
from components.models.target_modules import (
    ADAPTER_KEY,
    KeyPath,
    ModuleChoice,
    module_choices,
    resolve_modules,
)
from components.spec import (
    AdaLoraSpec,
    AdapterSpec,
    DoraSpec,
    FullSpec,
    HybridSpec,
    IA3Spec,
    LoHaSpec,
    LoKrSpec,
    LoraSpec,
    PrefixTuningSpec,
    PromptTuningSpec,
    PTuningSpec,
    SelectiveSpec,
    VeraSpec,
    adapter_methods,
    remove_adapter_class,
)

# peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` in every PeftModel constructor: a warning
# about peft's code on every load and training run, which no user can act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

CAUSAL_LM = TaskType.CAUSAL_LM


@dataclass(frozen=True)
class BuildContext:
    total_steps: int | None = None
    tokenizer: object | None = None
    counting: bool = False  # building on the meta device only to count parameters


@dataclass(frozen=True)
class WeightSelection:
    """Train base parameters in place: those whose name matches a pattern (all when None)."""

    patterns: tuple[str, ...] | None

    def selects(self, name: str) -> bool:
        return self.patterns is None or any(re.search(p, name) for p in self.patterns)


Built = PeftConfig | WeightSelection
BUILDERS: dict[str, Callable[..., Built]] = {}


def spec_methods() -> set[str]:
    """Every `adapter.method` the spec accepts: one per spec class (components.spec.AdapterBase subclasses)."""
    return set(adapter_methods())


def register(method: str, builder: Callable[..., Built]) -> None:
    """One builder per spec method: a second registration or a name the spec does not know is an error."""
    if method in BUILDERS:
        raise ValueError(f"adapter method '{method}' is registered twice ({BUILDERS[method].__name__}, {builder.__name__})")
    if method not in spec_methods():
        raise ValueError(f"adapter method '{method}' has no spec class (a components.spec.AdapterBase subclass); "
                         f"add one (a class with `method: Literal['{method}']`) before registering its builder")
    BUILDERS[method] = builder


def unregister(method: str) -> None:
    """Remove a method: its builder and its spec class (the union and the schema lose it), e.g. a method a
    test defined for itself."""
    BUILDERS.pop(method, None)
    remove_adapter_class(method)


def check_registry() -> None:
    """Every spec method has a builder (run at import: a missing builder used to fail only at training time)."""
    missing = spec_methods() - set(BUILDERS)
    if missing:
        raise ImportError(f"adapter methods {sorted(missing)} have a spec class but no builder; "
                          "register one in components/methods/registry.py")


# --- builders: spec -> library config (the one translation place) -------------------------------


def build_lora(spec: LoraSpec, ctx: BuildContext) -> LoraConfig:
    return LoraConfig(
        task_type=CAUSAL_LM, r=spec.r, lora_alpha=spec.resolved_alpha, lora_dropout=spec.dropout,
        target_modules=spec.target_modules, use_dora=isinstance(spec, DoraSpec),
    )


def build_adalora(spec: AdaLoraSpec, ctx: BuildContext) -> AdaLoraConfig:
    if ctx.total_steps is None:
        raise ValueError("adapter.method 'adalora' derives its rank schedule from the total step count; pass total_steps")
    tinit, tfinal = int(spec.warmup_fraction * ctx.total_steps), int(spec.final_fraction * ctx.total_steps)
    if tinit >= ctx.total_steps - tfinal:
        raise ValueError(
            f"adapter.warmup_fraction + adapter.final_fraction leave no rank-allocation phase in {ctx.total_steps} steps; "
            "lower them or train for more steps"
        )
    return AdaLoraConfig(
        task_type=CAUSAL_LM, init_r=spec.init_r, target_r=spec.target_r, lora_alpha=spec.resolved_alpha,
        lora_dropout=spec.dropout, target_modules=spec.target_modules, tinit=tinit, tfinal=tfinal,
        total_step=ctx.total_steps,
    )


def build_ia3(spec: IA3Spec, ctx: BuildContext) -> IA3Config:
    return IA3Config(task_type=CAUSAL_LM, target_modules=spec.target_modules, feedforward_modules=spec.feedforward_modules)


def build_loha(spec: LoHaSpec, ctx: BuildContext) -> LoHaConfig:
    return LoHaConfig(task_type=CAUSAL_LM, r=spec.r, alpha=spec.resolved_alpha, target_modules=spec.target_modules)


def build_lokr(spec: LoKrSpec, ctx: BuildContext) -> LoKrConfig:
    return LoKrConfig(task_type=CAUSAL_LM, r=spec.r, alpha=spec.resolved_alpha, target_modules=spec.target_modules)


def build_prompt_tuning(spec: PromptTuningSpec, ctx: BuildContext) -> PromptTuningConfig:
    if spec.init_text is None or ctx.counting:
        return PromptTuningConfig(task_type=CAUSAL_LM, num_virtual_tokens=spec.num_virtual_tokens)
    if ctx.tokenizer is None:
        raise ValueError("adapter.init_text needs the tokenizer; pass tokenizer= to apply_method")
    return PromptTuningConfig(
        task_type=CAUSAL_LM, num_virtual_tokens=spec.num_virtual_tokens, prompt_tuning_init=PromptTuningInit.TEXT,
        prompt_tuning_init_text=spec.init_text, tokenizer_name_or_path=ctx.tokenizer.name_or_path,
    )


def build_p_tuning(spec: PTuningSpec, ctx: BuildContext) -> PromptEncoderConfig:
    return PromptEncoderConfig(
        task_type=CAUSAL_LM, num_virtual_tokens=spec.num_virtual_tokens, encoder_hidden_size=spec.encoder_hidden_size,
    )


def build_prefix_tuning(spec: PrefixTuningSpec, ctx: BuildContext) -> PrefixTuningConfig:
    return PrefixTuningConfig(
        task_type=CAUSAL_LM, num_virtual_tokens=spec.num_virtual_tokens, prefix_projection=spec.prefix_projection,
    )


def build_selective(spec: SelectiveSpec, ctx: BuildContext) -> WeightSelection:
    return WeightSelection(tuple(spec.parameters))


def build_full(spec: FullSpec, ctx: BuildContext) -> WeightSelection:
    return WeightSelection(None)


def build_vera(spec: VeraSpec, ctx: BuildContext) -> VeraConfig:
    return VeraConfig(task_type=CAUSAL_LM, r=spec.r, d_initial=spec.d_initial, target_modules=spec.target_modules,
                      save_projection=True)  # the projections travel in the folder: vanilla peft loads it


def build_hybrid(spec: HybridSpec, ctx: BuildContext) -> hybrid.HybridBuild:
    names = hybrid.part_names([p.method for p in spec.parts])
    parts = tuple((name, BUILDERS[p.method](p, ctx)) for name, p in zip(names, spec.parts, strict=True))
    return hybrid.HybridBuild(parts, "prompt" if any(c.is_prompt_learning for _, c in parts) else "mixed")


register("lora", build_lora)
register("dora", build_lora)  # DoraSpec is a LoraSpec; build_lora sets use_dora
register("qlora", build_lora)  # LoRA; the 4-bit base comes from base_model.quantization
register("adalora", build_adalora)
register("ia3", build_ia3)
register("loha", build_loha)
register("lokr", build_lokr)
register("prompt_tuning", build_prompt_tuning)
register("p_tuning", build_p_tuning)
register("prefix_tuning", build_prefix_tuning)
register("selective", build_selective)
register("full", build_full)
register("vera", build_vera)
register("hybrid", build_hybrid)  # components/methods/hybrid.py: PeftMixedModel, or a soft prompt over a LoRA
check_registry()


# --- attaching -------------------------------------------------------------------------------


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def apply_method(model, adapter: AdapterSpec, *, total_steps: int | None = None, tokenizer=None):
    """The trainable model: a PeftModel for peft methods, the model itself for selective/full. An unset
    target_modules takes the model's architecture default (components.models.target_modules); set names are checked."""
    return _attach(model, adapter, BuildContext(total_steps=total_steps, tokenizer=tokenizer))


def _attach(model, adapter: AdapterSpec, ctx: BuildContext):
    adapter = resolve_modules(adapter, model)  # the builders see the modules of this model's architecture
    built = BUILDERS[adapter.method](adapter, ctx)
    if isinstance(built, hybrid.HybridBuild):
        model = hybrid.attach(model, built)
        fix_prompt_learning_generate(model)
        return model
    if isinstance(built, WeightSelection):
        if is_quantized(model):
            raise ValueError(
                f"adapter.method '{adapter.method}' trains base weights, which cannot be 4/8-bit; "
                "remove base_model.quantization or use method 'qlora'"
            )
        return _select_weights(model, built)
    if adapter.needs_quantized_base and not is_quantized(model) and not ctx.counting:
        raise ValueError(
            f"adapter.method is '{adapter.method}' but the base model is not quantized; "
            "add `quantization: {bits: 4}` under base_model or use method 'lora'"
        )
    # No `prepare_model_for_kbit_training`: it upcasts every non-4-bit layer to fp32, and with it the residual
    # stream (1.46x the activations of bf16 LoRA at 7B, measured). get_peft_model freezes the base; the
    # non-4-bit layers stay in the compute dtype (components.models.precision).
    peft_model = get_peft_model(model, built)
    fix_prompt_learning_generate(peft_model)
    return peft_model


def _select_weights(model, selection: WeightSelection):
    names = []
    for name, param in model.named_parameters():
        param.requires_grad_(selection.selects(name))
        if param.requires_grad:
            names.append(name)
    if not names:
        sample = ", ".join(n for n, _ in list(model.named_parameters())[:6])
        raise ValueError(
            f"adapter.parameters {list(selection.patterns or [])} match no parameter of the model "
            f"(names look like: {sample}, ...); use substrings or regexes of those names, e.g. 'norm'"
        )
    return model


def enable_gradient_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing of the base's layers, for every method. Non-reentrant
    checkpointing needs no input that requires grad; prompt learning gets `enable_input_require_grads`
    anyway, as peft recommends, so the soft prompt's gradient never depends on which variant runs."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x; the older name warns there
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base.config.use_cache = False
    if is_prompt_learning(model):
        base.enable_input_require_grads()


def disable_gradient_checkpointing(model) -> None:
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    (base.activation_checkpointing_disable if hasattr(base, "activation_checkpointing_disable")
     else base.gradient_checkpointing_disable)()
    base.config.use_cache = True
    if is_prompt_learning(model) and hasattr(base, "disable_input_require_grads"):
        base.disable_input_require_grads()


def adapters_disabled(model):
    """A context in which the model computes as its base (every hybrid part off)."""
    return hybrid.disabled(model) if hybrid.is_hybrid(model) else model.disable_adapter()


def is_prompt_learning(model) -> bool:
    return isinstance(model, PeftModel) and model.active_peft_config.is_prompt_learning


def virtual_token_offset(model) -> int:
    """How many positions the method prepends to every row's logits (prompt/p-tuning)."""
    if not is_prompt_learning(model) or model.active_peft_config.peft_type == "PREFIX_TUNING":
        return 0
    return model.active_peft_config.num_virtual_tokens


def fix_prompt_learning_generate(model) -> None:
    """peft 0.21's prompt-learning `generate` reads and writes `past_key_values`, which transformers 5
    renamed to `cache`: the prefix is then ignored and soft prompts are re-injected at every decoding
    step (the class of bugs of peft issues 2123/2131). Rename the key on the way through, so both
    agree. `components.training.recipe.generation_check` verifies the result against a no-cache decode."""
    if not is_prompt_learning(model) or getattr(model, "_adaptflow_generate_fixed", False):
        return
    original = model.base_model_prepare_inputs_for_generation
    if "cache" not in inspect.signature(original).parameters:
        return

    @functools.wraps(original)
    def renamed(*args, **kwargs):
        if "cache" in kwargs:
            kwargs["past_key_values"] = kwargs.pop("cache")
        inputs = original(*args, **kwargs)
        if "cache" in inputs:
            inputs["past_key_values"] = inputs.pop("cache")
        return inputs

    model.base_model_prepare_inputs_for_generation = renamed
    model._adaptflow_generate_fixed = True


# --- training hooks (generic loop, method-specific behaviour) ------------------------------------


def _adalora(model):
    if isinstance(model, PeftModel) and model.active_peft_config.peft_type == "ADALORA":
        return model.base_model
    return None


def extra_loss(model) -> torch.Tensor | None:
    """AdaLoRA's orthogonal regularisation of P and Q (what AdaLoraModel.forward adds when given labels;
    the loop computes its loss on answer positions only, so it adds this itself)."""
    ada = _adalora(model)
    if ada is None:
        return None
    name = ada.trainable_adapter_name
    terms = []
    for n, p in ada.model.named_parameters():
        if ("lora_A" in n or "lora_B" in n) and name in n:
            cov = p @ p.T if "lora_A" in n else p.T @ p
            terms.append(torch.norm(cov - torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device), p="fro"))
    if not terms:
        return None
    return ada.peft_config[name].orth_reg_weight * torch.stack(terms).mean()


def after_optimizer_step(model, step: int) -> None:
    """Called after optimizer.step() and before zero_grad (AdaLoRA reads the gradients to set its budget)."""
    ada = _adalora(model)
    if ada is not None:
        ada.update_and_allocate(step)


def method_state(model) -> tuple[dict[str, torch.Tensor], dict]:
    """State beyond parameters and optimizer that a resume needs (AdaLoRA's rank allocator)."""
    ada = _adalora(model)
    if ada is None:
        return {}, {}
    alloc = ada.rankallocator
    tensors = {f"{kind}/{k}": v.detach().clone() for kind in ("ipt", "exp_avg_ipt", "exp_avg_unc")
               for k, v in getattr(alloc, kind).items()}
    pattern = ada.peft_config[ada.trainable_adapter_name].rank_pattern
    return tensors, {"rank_pattern": {k: [bool(b) for b in v] for k, v in (pattern or {}).items()} or None}


def load_method_state(model, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    ada = _adalora(model)
    if ada is None:
        return
    for key, value in tensors.items():
        kind, name = key.split("/", 1)
        getattr(ada.rankallocator, kind)[name] = value
    ada.peft_config[ada.trainable_adapter_name].rank_pattern = meta.get("rank_pattern")


# --- counting -----------------------------------------------------------------------------


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total); for peft models total includes the adapter, as print_trainable_parameters."""
    if isinstance(model, PeftModel):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())  # parameters() yields tied weights once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _meta_model(config_folder: Path):
    """The model of a folder's config.json on the meta device: its modules, no weights allocated or read."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_folder)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def count_parameters_meta(config_folder: Path, adapter: AdapterSpec) -> tuple[int, int]:
    """The same counts with the model built on the meta device: no weights are allocated or read."""
    model = _meta_model(config_folder)
    with torch.device("meta"):
        model = _attach(model, adapter, BuildContext(total_steps=1000, counting=True))
    return count_parameters(model)


def module_choices_meta(config_folder: Path, adapter: AdapterSpec,
                        loc: KeyPath = ADAPTER_KEY) -> list[ModuleChoice]:
    """The modules the adapter (at spec key `loc`) will wrap on this architecture (defaults filled in, set names
    checked)."""
    return module_choices(adapter, _meta_model(config_folder), loc)
