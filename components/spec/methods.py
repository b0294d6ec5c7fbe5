"""The adapter methods (`behavior.adapter`): one spec class each, its traits, and the tagged union made
from them. Defining an `AdapterBase` subclass registers its tag, rebuilds the union in every model that
holds it (`_USES_ADAPTERS`, filled by `components.spec.task`), and adds it to the derived method sets
(PROMPT_LEARNING, WEIGHT_METHODS, ...). The hybrid of several methods is here too."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from typing import Annotated, Any, ClassVar, Literal, Union, get_args

from pydantic import BaseModel, Field, GetCoreSchemaHandler, TypeAdapter, model_validator
from pydantic_core import CoreSchema

from components.spec.base import MAX_ALPHA, MAX_RANK, MAX_VIRTUAL_TOKENS, Strict

TargetModules = list[str] | Literal["all-linear"]
# Unset (None): the base architecture's default, filled in once the model is known (components.models.target_modules)
MODULES_DEFAULT = "unset: the base architecture's default (peft's table by config.model_type; q_proj, v_proj on Llama)"


# --- adapter methods: one spec class each, its traits, the tagged union made from them ----------------

LrFamily = Literal["low-rank", "ia3", "prompt", "weights"]  # compare's starting rates (components.compare.variants)
_ADAPTERS: dict[str, type[AdapterBase]] = {}  # method tag -> spec class, in definition order
_USES_ADAPTERS: list[type[BaseModel]] = []  # models whose schema holds the union, rebuilt innermost first


class AdapterBase(Strict):
    """An adapter method's spec class: a `method: Literal[...]` tag, its fields, and its traits.

    Defining a subclass with a new tag adds it to `AdapterSpec` (the `behavior.adapter` union, the schema,
    `compare.methods`); `components.methods.registry.register` gives it its builder. Code asks a spec class for its
    traits instead of keeping lists of method names (docs/adding-a-method.md)."""

    lr_family: ClassVar[LrFamily]  # compare's learning-rate family; every method names one
    trains_base_weights: ClassVar[bool] = False  # trains base tensors: no 4/8-bit base, a private copy when served
    prompt_learning: ClassVar[bool] = False  # prepends virtual tokens: nothing to merge, no packing
    needs_quantized_base: ClassVar[bool] = False  # only on a 4-bit base (qlora); compare derives the base
    shares_base_lane: ClassVar[bool] = True  # peft injects it next to other adapters of its type in one PeftModel
    supports_checkpointing: ClassVar[bool] = True  # False: its state travels as the KV cache checkpointing drops
    compare_default: ClassVar[bool] = False  # one of `adaptflow compare`'s default variants
    weighted_merge: ClassVar[bool] = False  # peft's add_weighted_adapter combines it (`adaptflow compose`)
    hybrid_roles: ClassVar[frozenset[str]] = frozenset()  # "mixed", "prompt", "under_prompt": see HybridSpec
    module_defaults: ClassVar[str | None] = None  # peft's per-architecture table for an unset target_modules

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        field = cls.model_fields.get("method")
        if field is None:  # a base class of methods (traits shared by several), not a method
            return
        if not isinstance(field.default, str):
            raise TypeError(f"{cls.__name__}: an adapter spec class needs `method: Literal['<name>'] = '<name>'`")
        method = field.default
        if method in _ADAPTERS:
            raise TypeError(f"adapter method '{method}' is defined twice ({_ADAPTERS[method].__name__}, {cls.__name__}); "
                            "give the new class its own `method` tag")
        if getattr(cls, "lr_family", None) not in get_args(LrFamily):
            raise TypeError(f"{cls.__name__}: set `lr_family: ClassVar[LrFamily]` to one of {get_args(LrFamily)} "
                            "(the learning-rate family compare starts it from)")
        if cls.shares_base_lane and (cls.prompt_learning or cls.trains_base_weights):
            raise TypeError(f"{cls.__name__}: a prompt-learning or weight-training method cannot share a base lane; "
                            "set `shares_base_lane: ClassVar[bool] = False`")
        field = cls.model_fields.get("target_modules")
        if field is not None and field.default is None and cls.module_defaults is None:
            raise TypeError(f"{cls.__name__}: an unset target_modules takes the architecture's default; set "
                            "`module_defaults: ClassVar[str | None]` to the peft tuner whose table gives it, e.g. 'lora'")
        _ADAPTERS[method] = cls
        _rebuild_union()

    @property
    def soft_prompt(self) -> bool:
        """The adapter prepends virtual tokens (a hybrid: one of its parts does)."""
        return self.prompt_learning


def adapter_class(method: str) -> type[AdapterBase]:
    """The spec class of a method tag; an unknown tag is a KeyError naming the known ones."""
    try:
        return _ADAPTERS[method]
    except KeyError:
        raise KeyError(f"unknown adapter method '{method}'; known: {', '.join(_ADAPTERS)}") from None


def adapter_methods() -> tuple[str, ...]:
    """Every `adapter.method` the spec accepts, in definition order (lora first)."""
    return tuple(_ADAPTERS)


def remove_adapter_class(method: str) -> None:
    """Take a method out of the union again (components.methods.registry.unregister; a test's own method)."""
    del _ADAPTERS[method]
    _rebuild_union()


def _rebuild_union() -> None:
    """Regenerate the schemas that hold the union, so a method defined after import validates everywhere."""
    _parse_adapter.cache_clear()
    for model in _USES_ADAPTERS:
        model.model_rebuild(force=True)


class MethodSet(AbstractSet[str]):
    """The registered methods whose spec class has a trait: derived, never hand-kept, and live (a method
    defined later is in it)."""

    def __init__(self, trait: Callable[[type[AdapterBase]], bool]):
        self._trait = trait

    def __contains__(self, method: object) -> bool:
        return method in _ADAPTERS and self._trait(_ADAPTERS[method])

    def __iter__(self) -> Iterator[str]:
        return (m for m, cls in _ADAPTERS.items() if self._trait(cls))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @classmethod
    def _from_iterable(cls, it: Iterable[str]) -> frozenset[str]:  # set operators return plain sets
        return frozenset(it)

    def __repr__(self) -> str:
        return f"MethodSet({sorted(self)})"


class _RegisteredAdapters:
    """The schema of `AdapterSpec`: pydantic's tagged union over the spec classes defined now."""

    def __init__(self, exclude: Callable[[type[AdapterBase]], bool] = lambda cls: False):
        self._exclude = exclude

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        classes = tuple(cls for cls in _ADAPTERS.values() if not self._exclude(cls))
        return handler.generate_schema(Annotated[Union[classes], Field(discriminator="method")])  # noqa: UP007


class _RegisteredNames:
    """The schema of `MethodName`: a Literal of the method tags defined now."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return handler.generate_schema(Literal[adapter_methods()])


AdapterSpec = Annotated[AdapterBase, _RegisteredAdapters()]
MethodName = Annotated[str, _RegisteredNames()]


@functools.cache
def _parse_adapter() -> TypeAdapter:
    return TypeAdapter(AdapterSpec)


def parse_adapter(data: Any) -> AdapterBase:
    """A `behavior.adapter` mapping -> its spec class (any method defined so far)."""
    return _parse_adapter().validate_python(data)


class LoraSpec(AdapterBase):
    method: Literal["lora"] = "lora"
    r: int = Field(8, ge=1, le=MAX_RANK)
    alpha: int | None = Field(None, ge=1, le=MAX_ALPHA, description="defaults to 2*r")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: TargetModules | None = Field(None, description=MODULES_DEFAULT)
    lr_family = "low-rank"
    module_defaults = "lora"
    compare_default = True
    weighted_merge = True
    hybrid_roles = frozenset({"mixed", "under_prompt"})

    @property
    def resolved_alpha(self) -> int:
        return self.alpha if self.alpha is not None else 2 * self.r


class DoraSpec(LoraSpec):
    method: Literal["dora"] = "dora"  # type: ignore[assignment]
    compare_default = False
    weighted_merge = False  # add_weighted_adapter merges LoRA factors; DoRA's magnitude vector has no rule


class QLoraSpec(LoraSpec):
    method: Literal["qlora"] = "qlora"  # type: ignore[assignment]
    needs_quantized_base = True
    hybrid_roles = frozenset()


class AdaLoraSpec(AdapterBase):
    method: Literal["adalora"] = "adalora"
    init_r: int = Field(12, ge=1, le=MAX_RANK)
    target_r: int = Field(8, ge=1, le=MAX_RANK)
    alpha: int | None = Field(None, ge=1, le=MAX_ALPHA, description="defaults to 2*target_r")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: TargetModules | None = Field(None, description=MODULES_DEFAULT)
    warmup_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="tinit = fraction of total steps")
    final_fraction: float = Field(0.3, ge=0.0, lt=1.0, description="tfinal = fraction of total steps")
    lr_family = "low-rank"
    module_defaults = "adalora"

    @property
    def resolved_alpha(self) -> int:
        return self.alpha if self.alpha is not None else 2 * self.target_r


class IA3Spec(AdapterBase):
    method: Literal["ia3"] = "ia3"
    target_modules: TargetModules | None = Field(
        None, description="unset: the base architecture's default (peft's table by config.model_type; "
                          "k_proj, v_proj, down_proj on Llama)")
    feedforward_modules: list[str] | None = Field(
        None, description="unset: the architecture's default (down_proj on Llama) among target_modules")
    lr_family = "ia3"
    module_defaults = "ia3"
    compare_default = True


class LoHaSpec(AdapterBase):
    method: Literal["loha"] = "loha"
    r: int = Field(8, ge=1, le=MAX_RANK)
    alpha: int | None = Field(None, ge=1, le=MAX_ALPHA, description="defaults to 2*r")
    target_modules: TargetModules | None = Field(None, description=MODULES_DEFAULT)
    lr_family = "low-rank"
    module_defaults = "loha"
    hybrid_roles = frozenset({"mixed"})

    @property
    def resolved_alpha(self) -> int:
        return self.alpha if self.alpha is not None else 2 * self.r


class LoKrSpec(LoHaSpec):
    method: Literal["lokr"] = "lokr"  # type: ignore[assignment]
    module_defaults = "lokr"


class _PromptLearning(AdapterBase):
    """Traits shared by the prompt-learning methods (not a method itself: it has no tag)."""

    lr_family = "prompt"
    prompt_learning = True
    shares_base_lane = False  # virtual tokens change the input, so each has its own PeftModel


class PromptTuningSpec(_PromptLearning):
    method: Literal["prompt_tuning"] = "prompt_tuning"
    num_virtual_tokens: int = Field(20, ge=1, le=MAX_VIRTUAL_TOKENS)
    init_text: str | None = Field(None, description="initialise the soft prompt from this text")
    compare_default = True
    hybrid_roles = frozenset({"prompt"})


class PTuningSpec(_PromptLearning):
    method: Literal["p_tuning"] = "p_tuning"
    num_virtual_tokens: int = Field(20, ge=1, le=MAX_VIRTUAL_TOKENS)
    encoder_hidden_size: int = Field(128, ge=1, le=65_536)


class PrefixTuningSpec(_PromptLearning):
    method: Literal["prefix_tuning"] = "prefix_tuning"
    num_virtual_tokens: int = Field(20, ge=1, le=MAX_VIRTUAL_TOKENS)
    prefix_projection: bool = False
    supports_checkpointing = False  # its prefix is passed as past key values, which checkpointed layers drop


class _WeightTraining(AdapterBase):
    """Traits shared by the methods that train base tensors in place (not a method itself)."""

    lr_family = "weights"
    trains_base_weights = True
    shares_base_lane = False  # the base itself changes: a private copy when served


class SelectiveSpec(_WeightTraining):
    method: Literal["selective"] = "selective"
    parameters: list[str] = Field(
        ["bias", "norm"], min_length=1, description="substrings or regexes of parameter names to train"
    )


class FullSpec(_WeightTraining):
    method: Literal["full"] = "full"
    compare_default = True


class VeraSpec(AdapterBase):
    method: Literal["vera"] = "vera"
    r: int = Field(256, ge=1, le=MAX_RANK, description="rank of the shared random projections")
    d_initial: float = Field(0.1, gt=0, le=10.0, description="initial value of the trainable vector d")
    target_modules: TargetModules | None = Field(None, description=MODULES_DEFAULT)
    lr_family = "ia3"  # it trains scaling vectors, as IA3 does: IA3's rate, not LoRA's
    module_defaults = "vera"
    shares_base_lane = False  # every VeRA adapter in one PeftModel must share its projections: give each a copy


MIXED_PARTS = MethodSet(lambda cls: "mixed" in cls.hybrid_roles)  # tuners peft's PeftMixedModel trains together
PROMPT_PARTS = MethodSet(lambda cls: "prompt" in cls.hybrid_roles)  # a soft prompt on top of one low-rank part
UNDER_PROMPT = MethodSet(lambda cls: "under_prompt" in cls.hybrid_roles)  # the low-rank part under a soft prompt


def _is_hybrid(cls: type[AdapterBase]) -> bool:
    hybrid = globals().get("HybridSpec")  # None while HybridSpec itself is being built
    return hybrid is not None and issubclass(cls, hybrid)


HybridPart = Annotated[AdapterBase, _RegisteredAdapters(exclude=_is_hybrid)]  # every method but a hybrid


class HybridSpec(AdapterBase):
    """Several tuners on one base, trained together (docs/hybrid.md)."""

    method: Literal["hybrid"] = "hybrid"
    parts: list[HybridPart] = Field(
        [LoraSpec(), LoHaSpec()], min_length=2, max_length=4,
        description="lora/dora/loha/lokr together (peft's mixed model), or prompt_tuning + one lora/dora",
    )
    lr_family = "low-rank"
    shares_base_lane = False  # the parts change the base in several ways at once: its own copy

    @model_validator(mode="after")
    def _trainable_mix(self) -> HybridSpec:
        methods = [p.method for p in self.parts]
        prompts = [m for m in methods if m in PROMPT_PARTS]
        low_rank = [m for m in methods if m in MIXED_PARTS]
        if len(low_rank) == len(methods) or (len(prompts) == 1 and len(methods) == 2
                                             and len(low_rank) == 1 and low_rank[0] in UNDER_PROMPT):
            return self
        single = [m for m in adapter_methods() if m not in MIXED_PARTS | PROMPT_PARTS and not _is_hybrid(_ADAPTERS[m])]
        raise ValueError(
            f"adapter.parts {' + '.join(methods)}: peft cannot train this mix. A hybrid is either low-rank tuners "
            f"together ({', '.join(MIXED_PARTS)}; peft's PeftMixedModel), or {' or '.join(PROMPT_PARTS)} + one "
            f"{' or '.join(UNDER_PROMPT)}. {', '.join(single[:-1])} and {single[-1]} are single-method only"
        )

    @property
    def num_virtual_tokens(self) -> int:
        return sum(getattr(p, "num_virtual_tokens", 0) for p in self.parts)

    @property
    def soft_prompt(self) -> bool:
        return any(p.soft_prompt for p in self.parts)


def soft_prompt(adapter: AdapterBase) -> bool:
    """The adapter prepends virtual tokens (prompt learning, or a hybrid with a prompt part): no packing."""
    return adapter.soft_prompt


PROMPT_LEARNING = MethodSet(lambda cls: cls.prompt_learning)
WEIGHT_METHODS = MethodSet(lambda cls: cls.trains_base_weights)  # no 4/8-bit base, a private copy when served
NO_CHECKPOINTING = MethodSet(lambda cls: not cls.supports_checkpointing)
SHARED_LANE = MethodSet(lambda cls: cls.shares_base_lane)  # serving: adapters side by side in one PeftModel
NEEDS_QUANTIZED_BASE = MethodSet(lambda cls: cls.needs_quantized_base)
WEIGHTED_MERGE = MethodSet(lambda cls: cls.weighted_merge)  # what `adaptflow compose` can combine
