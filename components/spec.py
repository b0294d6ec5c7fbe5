"""The task spec: the user contract, as strict, frozen, nested pydantic models.

A spec file is data the user edits (specs/*.yaml); this module is its schema. Loading, line
numbers and friendly errors live in `components.specload`. Every adapter method is one class
here; its translation to peft lives in `components.methods` (one place: peft keyword names appear nowhere else).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    GetCoreSchemaHandler,
    PrivateAttr,
    Tag,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import CoreSchema

from components.remote_code import RemoteCodeError, check_pin

BUILTIN_MODEL = "smollm2-135m-instruct"
BUILTIN_EMBEDDER = "all-minilm-l6-v2"


class Strict(BaseModel):
    # allow_inf_nan=False: `.inf` and `.nan` are refused for every float (docs/spec.md, "Bounds")
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Resolve a relative path against the spec's folder and keep it inside the workspace."""
    ctx = info.context or {}
    base_dir, workspace = ctx.get("base_dir"), ctx.get("workspace")
    if base_dir is None:
        return value
    path = (Path(base_dir) / value).resolve() if not value.is_absolute() else value.resolve()
    if workspace is not None:
        root = Path(workspace).resolve()
        if not path.is_relative_to(root):
            raise ValueError(
                f"path '{value}' resolves to {path}, outside the workspace {root}; "
                "move the data inside the workspace or pass --workspace DIR"
            )
    if ctx.get("check_exists", True) and not path.exists():
        raise ValueError(f"path '{value}' does not exist (looked for {path}); fix the path or create the file")
    return path


SpecPath = Annotated[Path, AfterValidator(_resolve_path)]


def walk_confined(root: Path, confine: Path) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """(files under `root`, symlinks under it that resolve outside `confine` as (link, target)).

    Hidden entries (.git, .DS_Store) are skipped. A symlink, file or folder, is followed only when
    its target is inside `confine`; a folder link back into a folder being walked is skipped. Used at
    validate (spec) and at index time (vectorstore.documents): the same rule in both places."""
    confine = Path(confine).resolve()
    files: list[Path] = []
    escapes: list[tuple[Path, Path]] = []

    def walk(folder: Path, open_dirs: frozenset[Path]) -> None:
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_symlink() and not entry.resolve().is_relative_to(confine):
                escapes.append((entry, entry.resolve()))
            elif entry.is_dir():
                real = entry.resolve()
                if real not in open_dirs:
                    walk(entry, open_dirs | {real})
            elif entry.is_file():
                files.append(entry)

    root = Path(root)
    if root.is_symlink() and not root.resolve().is_relative_to(confine):
        return [], [(root, root.resolve())]
    if root.is_dir():
        walk(root, frozenset({root.resolve()}))
    elif root.exists():
        files.append(root)
    return files, escapes


_PATH_SYNTAX = ("/", "./", "../", "~")


def _local_folder(value: str, field: str, flag: str, allow_outside: bool, info: ValidationInfo) -> str:
    """A model/embedder id that names a local folder, resolved like every other spec path: against the
    spec's folder, inside the workspace unless `flag` says otherwise. Other ids are left to the loaders.

    An id written as a path (/, ./, ../, ~) must be a folder; a bare `org/name` is a local folder only
    when that folder exists next to the spec, else a Hugging Face id."""
    ctx = info.context or {}
    base_dir, workspace = ctx.get("base_dir"), ctx.get("workspace")
    if base_dir is None:
        return value
    written_as_path = value.startswith(_PATH_SYNTAX) or value in (".", "..")
    folder = (Path(base_dir) / Path(value).expanduser()).resolve()
    if not folder.is_dir():
        if written_as_path and ctx.get("check_exists", True):
            raise ValueError(f"{field} '{value}' is written as a path but {folder} is not a folder; "
                             "fix the path (relative paths start at the spec's folder) or use a Hugging Face id")
        return value
    if workspace is not None and not folder.is_relative_to(Path(workspace).resolve()) and not allow_outside:
        raise ValueError(
            f"{field} '{value}' resolves to {folder}, outside the workspace {Path(workspace).resolve()}; move it "
            f"inside, pass --workspace DIR, or set `{flag}: true` to use it from there (its weights are then "
            "recorded by hash in the manifest)"
        )
    return str(folder)


# --- base model --------------------------------------------------------------------------


class QuantizationSpec(Strict):
    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True


class BaseModelSpec(Strict):
    id: str = Field(BUILTIN_MODEL, description="built-in alias, Hugging Face id, or a local folder (relative to the spec)")
    revision: str | None = Field(
        None, description="with trust_remote_code: a full 40-hex commit, or for a local folder the sha256 of its "
        "*.py files (python -m components.remote_code FOLDER)"
    )
    trust_remote_code: bool = False
    quantization: QuantizationSpec | None = None
    allow_outside_workspace: bool = Field(
        False, description="let `id` be a local folder outside the workspace (recorded by its weights hash)"
    )

    @model_validator(mode="after")
    def _resolve_and_pin(self, info: ValidationInfo) -> BaseModelSpec:
        if self.id != BUILTIN_MODEL:  # frozen model: the resolved folder replaces the id as written
            resolved = _local_folder(self.id, "base_model.id", "base_model.allow_outside_workspace",
                                     self.allow_outside_workspace, info)
            object.__setattr__(self, "id", resolved)
        if self.trust_remote_code:
            if not self.revision:
                raise ValueError(
                    "trust_remote_code is true but revision is missing; pin a commit with `revision: <sha>` "
                    "(all 40 hex digits; for a local folder the sha256 of its *.py files) so the code that runs is "
                    "the code you reviewed"
                )
            local = Path(self.id).expanduser() if Path(self.id).expanduser().is_dir() else None  # as resolve_model
            try:
                check_pin(self.id, local, self.revision)
            except RemoteCodeError as exc:
                raise ValueError(str(exc)) from None
        return self


# --- behavior: data, adapter methods, training ---------------------------------------------


class BehaviorDataSpec(Strict):
    train: SpecPath
    eval: SpecPath | None = None
    format: Literal["chat", "instruction", "completion"] = "chat"
    eval_split: float = Field(0.1, ge=0.0, lt=0.9, description="held out of train when `eval` is not given")
    over_length: Literal["truncate", "drop", "error"] = "truncate"


TargetModules = list[str] | Literal["all-linear"]


# Upper bounds (docs/spec.md, "Bounds"): far above any sane value, low enough that a typo such as
# `batch_size: 1e14` or `lr: 1e300` is an error at validate instead of an hour of work or a NaN.
MAX_RANK = 4096
MAX_ALPHA = 65_536
MAX_VIRTUAL_TOKENS = 4096
MAX_STEPS = 10_000_000
MAX_SEQ_LEN = 1_048_576


# --- adapter methods: one spec class each, its traits, the tagged union made from them ----------------

LrFamily = Literal["low-rank", "ia3", "prompt", "weights"]  # compare's starting rates (components.compare.variants)
_ADAPTERS: dict[str, type[AdapterBase]] = {}  # method tag -> spec class, in definition order
_USES_ADAPTERS: list[type[BaseModel]] = []  # models whose schema holds the union, rebuilt innermost first


class AdapterBase(Strict):
    """An adapter method's spec class: a `method: Literal[...]` tag, its fields, and its traits.

    Defining a subclass with a new tag adds it to `AdapterSpec` (the `behavior.adapter` union, the schema,
    `compare.methods`); `components.methods.register` gives it its builder. Code asks a spec class for its
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
    """Take a method out of the union again (components.methods.unregister; a test's own method)."""
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
    target_modules: TargetModules = ["q_proj", "v_proj"]
    lr_family = "low-rank"
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
    target_modules: TargetModules = ["q_proj", "v_proj"]
    warmup_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="tinit = fraction of total steps")
    final_fraction: float = Field(0.3, ge=0.0, lt=1.0, description="tfinal = fraction of total steps")
    lr_family = "low-rank"

    @property
    def resolved_alpha(self) -> int:
        return self.alpha if self.alpha is not None else 2 * self.target_r


class IA3Spec(AdapterBase):
    method: Literal["ia3"] = "ia3"
    target_modules: TargetModules = ["k_proj", "v_proj", "down_proj"]
    feedforward_modules: list[str] = ["down_proj"]
    lr_family = "ia3"
    compare_default = True


class LoHaSpec(AdapterBase):
    method: Literal["loha"] = "loha"
    r: int = Field(8, ge=1, le=MAX_RANK)
    alpha: int | None = Field(None, ge=1, le=MAX_ALPHA, description="defaults to 2*r")
    target_modules: TargetModules = ["q_proj", "v_proj"]
    lr_family = "low-rank"
    hybrid_roles = frozenset({"mixed"})

    @property
    def resolved_alpha(self) -> int:
        return self.alpha if self.alpha is not None else 2 * self.r


class LoKrSpec(LoHaSpec):
    method: Literal["lokr"] = "lokr"  # type: ignore[assignment]


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
    target_modules: TargetModules = ["q_proj", "v_proj"]
    lr_family = "ia3"  # it trains scaling vectors, as IA3 does: IA3's rate, not LoRA's
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


class DistributedSpec(Strict):
    processes: int = Field(
        1, ge=1, le=4096, description="training processes (ranks) that `accelerate launch` starts around the same "
        "loop: gloo on CPU, NCCL on GPUs (one GPU per process); the global batch stays batch_size x grad_accum"
    )
    config: SpecPath | None = Field(
        None, description="an accelerate config file (`accelerate config`): machines, ranks, main process address, "
        "distributed_type MULTI_GPU (DDP) or FSDP; passed to `accelerate launch --config_file` as is (docs/scale.md)"
    )

    @model_validator(mode="after")
    def _config_runs(self) -> DistributedSpec:
        from components.accelerate_config import check

        check(self.config)
        return self


class TrainingSpec(Strict):
    epochs: float = Field(2, gt=0, le=10_000)
    max_steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="overrides epochs when set")
    batch_size: int = Field(8, ge=1, le=65_536)
    grad_accum: int = Field(1, ge=1, le=65_536)
    lr: float = Field(2.0e-4, gt=0, le=10.0)
    weight_decay: float = Field(0.0, ge=0, le=10.0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_seq_len: int = Field(512, ge=8, le=MAX_SEQ_LEN)
    seed: int = Field(0, ge=-(2**63), le=2**63 - 1)
    eval_every: int | None = Field(None, ge=1, le=MAX_STEPS, description="steps; default: once per epoch")
    checkpoint_every: int | None = Field(None, ge=1, le=MAX_STEPS, description="steps; default: max(10, total/5)")
    max_grad_norm: float = Field(1.0, gt=0, le=1e6)
    packing: bool = Field(
        False, description="pack examples into max_seq_len rows; default groups by length (measured faster here)"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="compute dtype of the frozen base and autocast: auto = bf16 on a GPU that supports it, "
        "else fp16; fp32 on CPU. Trainable weights stay fp32. Evaluation and serving use the same policy"
    )
    gradient_checkpointing: Literal["auto"] | bool = Field(
        "auto", description="recompute activations in backward (non-reentrant): ~0.75x speed for a fraction of "
        "the activation memory; auto = on when the activation estimate is over 25% of the device's memory, or "
        "over the weights' memory on a quantized base (docs/memory.md)"
    )
    distributed: DistributedSpec | None = Field(
        None, description="train on several processes through accelerate; default: one process (docs/scale.md)"
    )

    @model_validator(mode="after")
    def _batch_splits_over_processes(self) -> TrainingSpec:
        n = self.distributed.processes if self.distributed else 1
        if self.batch_size % n:
            fits = ", ".join(str(k) for k in range(1, self.batch_size + 1) if self.batch_size % k == 0)
            raise ValueError(
                f"training.batch_size ({self.batch_size}) does not split over training.distributed.processes ({n}): "
                f"every micro-batch of {self.batch_size} examples is shared evenly between the processes, so that the "
                f"global batch (batch_size x grad_accum = {self.batch_size * self.grad_accum}) stays what the spec says; "
                f"set batch_size to a multiple of {n} (e.g. {self.batch_size + n - self.batch_size % n}) or processes "
                f"to one of {fits}"
            )
        return self


class BehaviorSpec(Strict):
    data: BehaviorDataSpec
    adapter: AdapterSpec = LoraSpec()
    training: TrainingSpec = TrainingSpec()

    @model_validator(mode="after")
    def _prefix_tuning_cannot_checkpoint(self) -> BehaviorSpec:
        if self.adapter.method in NO_CHECKPOINTING and self.training.gradient_checkpointing is True:
            raise ValueError(
                f"training.gradient_checkpointing is true but adapter.method is '{self.adapter.method}', whose prefix "
                "travels as the KV cache that checkpointed layers drop; set `gradient_checkpointing: false` (or auto), "
                "or use prompt_tuning / p_tuning, which checkpoint"
            )
        return self

    @model_validator(mode="after")
    def _accelerate_config_runs(self) -> BehaviorSpec:
        from components.accelerate_config import problem

        dist = self.training.distributed
        if dist is not None and (why := problem(dist.config, self.adapter.method)):
            raise ValueError(why)
        return self


# --- knowledge: documents, chunking, embedder, index -----------------------------------------


class ChunkingSpec(Strict):
    size: int = Field(200, ge=16, le=MAX_SEQ_LEN, description="in embedder tokens")
    overlap: int = Field(40, ge=0, le=MAX_SEQ_LEN)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingSpec:
        if self.overlap >= self.size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than size ({self.size})")
        return self


class _AnnIndex(Strict):
    min_recall: float = Field(0.95, gt=0, le=1, description="build fails if recall@k vs exact is lower")


class AutoIndexSpec(_AnnIndex):
    type: Literal["auto"] = "auto"
    memory_budget_mb: int = Field(2048, ge=1, le=1 << 30, description="above this, auto picks IVF-PQ")


class FlatIndexSpec(Strict):
    type: Literal["flat"] = "flat"


class HnswIndexSpec(_AnnIndex):
    type: Literal["hnsw"] = "hnsw"
    m: int = Field(32, ge=4, le=1024)
    ef_construction: int = Field(80, ge=8, le=65_536)
    ef_search: int = Field(64, ge=1, le=65_536)


class IvfIndexSpec(_AnnIndex):
    type: Literal["ivf"] = "ivf"
    nlist: int | None = Field(None, ge=1, le=1 << 24, description="defaults to ~4*sqrt(n)")
    nprobe: int = Field(16, ge=1, le=1 << 24)


class IvfPqIndexSpec(IvfIndexSpec):
    type: Literal["ivfpq"] = "ivfpq"  # type: ignore[assignment]
    pq_m: int = Field(48, ge=1, le=4096, description="sub-quantizers; must divide the dimension")
    pq_bits: int = Field(8, ge=4, le=12)


class FactoryIndexSpec(_AnnIndex):
    """Any FAISS index factory string, e.g. `type: "IVF256,PQ32"`."""

    type: str = Field(json_schema_extra={"not": {"enum": ["auto", "flat", "hnsw", "ivf", "ivfpq"]}})


_INDEX_TAGS = {"auto", "flat", "hnsw", "ivf", "ivfpq"}


def _index_tag(value: Any) -> str:
    kind = value.get("type", "auto") if isinstance(value, dict) else getattr(value, "type", "auto")
    return kind if kind in _INDEX_TAGS else "factory"


IndexSpec = Annotated[
    Annotated[AutoIndexSpec, Tag("auto")]
    | Annotated[FlatIndexSpec, Tag("flat")]
    | Annotated[HnswIndexSpec, Tag("hnsw")]
    | Annotated[IvfIndexSpec, Tag("ivf")]
    | Annotated[IvfPqIndexSpec, Tag("ivfpq")]
    | Annotated[FactoryIndexSpec, Tag("factory")],
    Discriminator(_index_tag),
]


KNOWLEDGE_FT_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class KnowledgeFinetuneSpec(Strict):
    """How `inject: finetune | both` trains the documents into the model (docs/knowledge-injection.md)."""

    data: SpecPath | None = Field(
        None, description="question-answer pairs ({\"question\", \"answer\"} per line) to train on; "
                          "default: continued pretraining on the documents' chunks, chunked like the index")
    adapter: Annotated[LoraSpec | FullSpec, Field(discriminator="method")] = Field(
        LoraSpec(r=64, alpha=128, dropout=0.0, target_modules=KNOWLEDGE_FT_MODULES),
        description="a high-rank LoRA on every linear layer (default), or {method: full}")
    training: TrainingSpec = Field(
        TrainingSpec(epochs=4, batch_size=8, lr=1.0e-3, max_seq_len=192, warmup_ratio=0.05),
        description="defaults sized for the built-in 135M model on a few dozen documents")


class KnowledgeSpec(Strict):
    documents: SpecPath
    inject: Literal["rag", "finetune", "both"] = Field(
        "rag", description="rag: retrieve the documents at query time (an index); finetune: train them into an adapter "
                           "(`finetune:`); both: the trained adapter and the index")
    finetune: KnowledgeFinetuneSpec = KnowledgeFinetuneSpec()
    chunking: ChunkingSpec = ChunkingSpec()
    embedder: str = Field(BUILTIN_EMBEDDER, description="built-in alias, Hugging Face id, or a local folder")
    index: IndexSpec = AutoIndexSpec()
    top_k: int = Field(4, ge=1, le=100)
    hybrid: bool = Field(False, description="fuse BM25 with dense retrieval (reciprocal rank fusion)")
    reader: str = Field(
        "auto", pattern=r"^(none|auto|builtin|[a-z0-9][a-z0-9-]*@[A-Za-z0-9._-]+)$",
        description="the adapter that reads retrieved context: none, builtin (a LoRA trained once per base on a "
                    "shipped reading set), NAME@REF (a registered adapter of the same base), or auto (builtin on "
                    "the built-in base when it scores better on the evaluation set; see docs/reading.md)",
    )
    abstain: Literal["auto", "model", "calibrated"] = Field(
        "auto", description="when the system says 'not in the documents': model (when the model's greedy answer says "
                            "it), calibrated (also when the reader's own probability of that phrase, against its answer, "
                            "passes a threshold calibrated on the held-out half of the evaluation questions), or auto "
                            "(calibrated where a reader reads and the index tuned on a held-out half; see docs/reading.md)",
    )
    allow_outside_workspace: bool = Field(
        False, description="let `embedder` be a local folder outside the workspace (recorded by its weights hash)"
    )
    _workspace: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _confine(self, info: ValidationInfo) -> KnowledgeSpec:
        """Resolve a local embedder folder; symlinks under `documents` must stay inside the workspace."""
        if self.embedder != BUILTIN_EMBEDDER:
            resolved = _local_folder(self.embedder, "knowledge.embedder", "knowledge.allow_outside_workspace",
                                     self.allow_outside_workspace, info)
            object.__setattr__(self, "embedder", resolved)
        workspace = (info.context or {}).get("workspace")
        self._workspace = Path(workspace).resolve() if workspace is not None else None
        if self._workspace is not None and Path(self.documents).exists():
            _, escapes = walk_confined(Path(self.documents), self._workspace)
            if escapes:
                link, target = escapes[0]
                raise ValueError(
                    f"knowledge.documents must not hold symlinks that leave the workspace {self._workspace}: {link} -> "
                    f"{target}{f' (and {len(escapes) - 1} more)' if len(escapes) > 1 else ''}; copy the file into the "
                    "workspace or remove the link (documents are served as citations)"
                )
        return self

    @property
    def confine_root(self) -> Path:
        """What symlinks under `documents` must resolve inside: the workspace the spec was loaded with,
        else the documents folder itself."""
        docs = Path(self.documents)
        return self._workspace or (docs if docs.is_dir() else docs.parent).resolve()


# --- evaluation ------------------------------------------------------------------------------

GATE_METRICS = {
    "answer_f1", "exact_match", "contains_answer", "accuracy", "hit_at_k", "mrr", "forgetting",
    "abstain", "retrieval_loss", "reading_loss",
}
_GATE_OPS = (">=", "<=", ">", "<", "==")


def parse_gate(expr: str) -> tuple[str, float]:
    """'>= 0.5' -> ('>=', 0.5). Raises ValueError with the accepted forms."""
    text = expr.strip()
    for op in _GATE_OPS:
        if text.startswith(op):
            try:
                return op, float(text[len(op):])
            except ValueError:
                break
    raise ValueError(f"gate '{expr}' is not '<op> <number>'; write e.g. \">= 0.5\" (ops: {', '.join(_GATE_OPS)})")


class EvaluationSpec(Strict):
    data: SpecPath | None = Field(None, description="jsonl of {question|messages, answer, doc_ids?}")
    gates: dict[str, str] = {}
    promote_to: str = Field("production", pattern=r"^[a-z][a-z0-9_-]*$")
    max_new_tokens: int = Field(48, ge=1, le=MAX_SEQ_LEN)
    forgetting_text: SpecPath | None = Field(None, description="default: the general-text sample we ship")

    @field_validator("gates")
    @classmethod
    def _gates_parse(cls, gates: dict[str, str]) -> dict[str, str]:
        for metric, expr in gates.items():
            if metric not in GATE_METRICS:
                raise ValueError(f"unknown gate metric '{metric}'; use one of {sorted(GATE_METRICS)}")
            parse_gate(expr)
        return gates


# --- compare: one spec, several adapter variants ---------------------------------------------

SelectRule = Literal["best_score", "smallest_passing"]  # the one list of rules: spec, CLI and selection use it


class CompareSpec(Strict):
    """`adaptflow compare`: the behavior half once per variant, then one variant chosen (docs/compare.md)."""

    methods: list[MethodName] = Field([], description="each on its defaults; the spec's own method on the spec's adapter")
    variants: list[AdapterSpec] = Field([], description="adapter overrides, e.g. {method: lora, r: 4}")
    base_models: list[str] = Field(
        [], max_length=8, description="a model axis: every variant once per base model id (alias, HF id or folder)"
    )
    select: SelectRule = Field(
        "best_score", description="smallest_passing: fewest trainable parameters among variants passing the gates"
    )
    lr: dict[MethodName, float] = Field(
        {}, description="learning rate per method, e.g. {full: 5.0e-5}; default: the spec's lr within its method's "
        "family, else the family's rate (low-rank 2e-4, ia3 1e-2, prompt 3e-2, full/selective 5e-5)"
    )

    @model_validator(mode="after")
    def _positive_lr(self) -> CompareSpec:
        bad = {m: v for m, v in self.lr.items() if not v > 0}
        if bad:
            raise ValueError(f"compare.lr must be positive; got {bad}")
        return self


COMPOSE_HOWS = ("linear", "ties", "dare_ties", "cat")


class ComposeSpec(Strict):
    """`adaptflow compose`: a new system from registered LoRA systems on one base (docs/compose.md)."""

    sources: list[str] = Field(min_length=2, max_length=8, description="registry refs, e.g. [support-triage@v1, lore@v2]")
    how: Literal[COMPOSE_HOWS] = Field("linear", description="peft add_weighted_adapter combination type")  # type: ignore[valid-type]
    weights: list[float] | None = Field(None, description="one per source; default 1/len(sources) each")
    density: float = Field(0.5, gt=0.0, le=1.0, description="ties / dare_ties: the fraction of each update kept")

    @model_validator(mode="after")
    def _one_weight_per_source(self) -> ComposeSpec:
        if self.weights is not None and len(self.weights) != len(self.sources):
            raise ValueError(f"compose.weights has {len(self.weights)} values for {len(self.sources)} sources; "
                             "give one weight per source, in the same order")
        return self

    @property
    def resolved_weights(self) -> list[float]:
        return self.weights if self.weights is not None else [1.0 / len(self.sources)] * len(self.sources)


# --- the task --------------------------------------------------------------------------------


class TaskSpec(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64)
    goal: Literal["behavior", "knowledge", "both", "auto"] = "auto"
    base_model: BaseModelSpec = BaseModelSpec()
    behavior: BehaviorSpec | None = None
    knowledge: KnowledgeSpec | None = None
    evaluation: EvaluationSpec | None = None
    compare: CompareSpec | None = None
    compose: ComposeSpec | None = None

    @model_validator(mode="after")
    def _sections_match_goal(self) -> TaskSpec:
        need = {"behavior": ["behavior"], "knowledge": ["knowledge"], "both": ["behavior", "knowledge"]}
        for section in need.get(self.goal, []):
            if getattr(self, section) is None:
                raise ValueError(
                    f"goal is '{self.goal}' but the `{section}:` section is missing; "
                    f"add it or set goal to '{'knowledge' if section == 'behavior' else 'behavior'}'"
                )
        if self.goal == "auto" and self.behavior is None and self.knowledge is None and self.compose is None:
            raise ValueError("goal is 'auto' but neither `behavior:` nor `knowledge:` is declared; add one of them")
        self._check_quantization()
        if self.behavior is not None and self.knowledge is not None and self.knowledge.reader not in ("auto", "none"):
            raise ValueError(
                f"knowledge.reader is '{self.knowledge.reader}' but the spec trains its own adapter (`behavior:`), "
                "and one system carries one adapter; remove knowledge.reader or the behavior section"
            )
        if self.knowledge is not None and self.knowledge.abstain == "calibrated":
            if self.behavior is None and self.knowledge.reader == "none":
                raise ValueError("knowledge.abstain is 'calibrated' but knowledge.reader is 'none': the threshold is "
                                 "the reader's; set knowledge.reader: builtin (or auto), or knowledge.abstain: model")
            if self.evaluation is None or self.evaluation.data is None:
                raise ValueError("knowledge.abstain is 'calibrated' but evaluation.data is missing: the threshold is "
                                 "calibrated on a held-out half of its questions (rows with doc_ids); add "
                                 "evaluation.data or set knowledge.abstain: model")
        if self.knowledge is not None and self.knowledge.inject != "rag":
            self._check_inject()
        if self.compare is not None and self.behavior is None:
            raise ValueError(
                "compare is declared but the `behavior:` section is missing (compare varies behavior.adapter); "
                "add behavior or remove compare"
            )
        return self

    def _check_inject(self) -> None:
        inject = self.knowledge.inject
        if self.behavior is not None:
            raise ValueError(
                f"knowledge.inject is '{inject}', which trains the documents into the system's adapter, but the spec "
                "also trains a `behavior:` adapter, and one system carries one adapter; use inject: rag, or move the "
                "behavior examples to another spec and compose the two (adaptflow compose)"
            )
        if self.goal == "behavior":
            raise ValueError(f"knowledge.inject is '{inject}' but goal is 'behavior'; set goal to knowledge or auto")
        pairs = self.knowledge.finetune.data
        if pairs is not None and self.evaluation is not None and self.evaluation.data is not None \
                and Path(pairs).resolve() == Path(self.evaluation.data).resolve():
            raise ValueError(
                "knowledge.finetune.data is the evaluation set: trained on its own answers the score measures recall of "
                "the answers, not of the documents; give finetune.data a separate file of question-answer pairs, or "
                "remove it to train on the documents' chunks"
            )
        if self.evaluation is None or self.evaluation.data is None:
            raise ValueError(
                f"knowledge.inject is '{inject}': the trained documents are scored on the evaluation questions, "
                "but evaluation.data is missing; add `evaluation: {data: qa.jsonl}`"
            )

    def _check_quantization(self) -> None:
        method = self.behavior.adapter.method if self.behavior else None
        quant = self.base_model.quantization
        if method in NEEDS_QUANTIZED_BASE and quant is None:
            raise ValueError(
                f"behavior.adapter.method is '{method}' but base_model.quantization is missing; "
                "add `quantization: {bits: 4}` under base_model or use method 'lora'"
            )
        if method in WEIGHT_METHODS and quant is not None:
            raise ValueError(
                f"behavior.adapter.method '{method}' trains base weights, which cannot be 4/8-bit; "
                "remove base_model.quantization or use method 'qlora'"
            )


_USES_ADAPTERS.extend([HybridSpec, BehaviorSpec, CompareSpec, TaskSpec])  # innermost first: each embeds the one before
