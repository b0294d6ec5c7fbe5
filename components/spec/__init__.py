"""The task spec: the user contract, as strict, frozen, nested pydantic models.

A spec file is data the user edits (specs/*.yaml); this package is its schema. Loading, line
numbers and friendly errors live in `components.spec.load`. Every adapter method is one class
in `components.spec.methods`; its translation to peft lives in `components.methods.registry` (one place: peft keyword names appear nowhere else).

One module per concern, each importing only the ones before it:
- `base`: the `Strict` base model, built-in names, upper bounds, path resolution and workspace confinement;
- `model`: the `base_model:` section (QuantizationSpec, BaseModelSpec) and `knowledge.reader_model` (ReaderModelSpec);
- `methods`: the adapter methods, their traits, the `behavior.adapter` union and the method sets derived from it;
- `behavior`: the `behavior:` section (data, training, distributed);
- `knowledge`: the `knowledge:` section (chunking, index specs, finetune injection);
- `evaluation`: the `evaluation:` section and its gates;
- `compare`: the `compare:` and `compose:` sections;
- `task`: `TaskSpec`, the whole file.

Every public name is re-exported here: import from `components.spec`.
"""

from components.spec.base import (
    BUILTIN_BASES,
    BUILTIN_EMBEDDER,
    BUILTIN_GEMMA,
    BUILTIN_MODEL,
    CHAT_TEMPLATES,
    MAX_ALPHA,
    MAX_RANK,
    MAX_SEQ_LEN,
    MAX_STEPS,
    MAX_VIRTUAL_TOKENS,
    SpecPath,
    Strict,
    walk_confined,
)
from components.spec.behavior import (
    DATA_FIELDS,
    BehaviorDataSpec,
    BehaviorSpec,
    DistributedSpec,
    TrainingSpec,
)
from components.spec.compare import (
    COMPOSE_HOWS,
    CompareSpec,
    ComposeSpec,
    SelectRule,
)
from components.spec.evaluation import (
    GATE_METRICS,
    EvaluationSpec,
    ForgettingSpec,
    parse_gate,
)
from components.spec.knowledge import (
    KNOWLEDGE_FT_MODULES,
    AutoIndexSpec,
    ChunkingSpec,
    FactoryIndexSpec,
    FlatIndexSpec,
    HnswIndexSpec,
    IndexSpec,
    IvfIndexSpec,
    IvfPqIndexSpec,
    KnowledgeFinetuneSpec,
    KnowledgeSpec,
)
from components.spec.methods import (
    MIXED_PARTS,
    NEEDS_QUANTIZED_BASE,
    NO_CHECKPOINTING,
    PROMPT_LEARNING,
    PROMPT_PARTS,
    SHARED_LANE,
    UNDER_PROMPT,
    WEIGHT_METHODS,
    WEIGHTED_MERGE,
    AdaLoraSpec,
    AdapterBase,
    AdapterSpec,
    DoraSpec,
    FullSpec,
    HybridPart,
    HybridSpec,
    IA3Spec,
    LoHaSpec,
    LoKrSpec,
    LoraSpec,
    LrFamily,
    MethodName,
    MethodSet,
    PrefixTuningSpec,
    PromptTuningSpec,
    PTuningSpec,
    QLoraSpec,
    SelectiveSpec,
    TargetModules,
    VeraSpec,
    adapter_class,
    adapter_methods,
    parse_adapter,
    remove_adapter_class,
    soft_prompt,
)
from components.spec.model import (
    BaseModelSpec,
    QuantizationSpec,
    ReaderModelSpec,
)
from components.spec.task import (
    TaskSpec,
)

__all__ = [
    "AdaLoraSpec", "adapter_class", "adapter_methods", "AdapterBase", "AdapterSpec", "AutoIndexSpec",
    "BaseModelSpec", "BehaviorDataSpec", "BehaviorSpec", "BUILTIN_BASES", "BUILTIN_EMBEDDER", "BUILTIN_GEMMA",
    "BUILTIN_MODEL", "CHAT_TEMPLATES", "ChunkingSpec",
    "CompareSpec", "COMPOSE_HOWS", "ComposeSpec", "DATA_FIELDS", "DistributedSpec", "DoraSpec", "EvaluationSpec", "ForgettingSpec",
    "FactoryIndexSpec", "FlatIndexSpec", "FullSpec", "GATE_METRICS", "HnswIndexSpec", "HybridPart",
    "HybridSpec", "IA3Spec", "IndexSpec", "IvfIndexSpec", "IvfPqIndexSpec", "KNOWLEDGE_FT_MODULES",
    "KnowledgeFinetuneSpec", "KnowledgeSpec", "LoHaSpec", "LoKrSpec", "LoraSpec", "LrFamily", "MAX_ALPHA",
    "MAX_RANK", "MAX_SEQ_LEN", "MAX_STEPS", "MAX_VIRTUAL_TOKENS", "MethodName", "MethodSet", "MIXED_PARTS",
    "NEEDS_QUANTIZED_BASE", "NO_CHECKPOINTING", "parse_adapter", "parse_gate", "PrefixTuningSpec",
    "PROMPT_LEARNING", "PROMPT_PARTS", "PromptTuningSpec", "PTuningSpec", "QLoraSpec", "QuantizationSpec",
    "ReaderModelSpec", "remove_adapter_class", "SelectiveSpec", "SelectRule", "SHARED_LANE", "soft_prompt", "SpecPath", "Strict",
    "TargetModules", "TaskSpec", "TrainingSpec", "UNDER_PROMPT", "VeraSpec", "walk_confined",
    "WEIGHT_METHODS", "WEIGHTED_MERGE",
]
