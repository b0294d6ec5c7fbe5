"""The `knowledge:` section: documents, chunking, embedder, the FAISS index specs (a tagged union), and how
`inject: finetune | both` trains the documents into the model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, PrivateAttr, Tag, ValidationInfo, model_serializer, model_validator

from components.spec.base import BUILTIN_EMBEDDER, MAX_SEQ_LEN, SpecPath, Strict, _local_folder, walk_confined
from components.spec.behavior import TrainingSpec
from components.spec.methods import FullSpec, LoraSpec
from components.spec.model import ReaderModelSpec

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


# Every linear layer but the output head, whatever the architecture: peft resolves `all-linear` on the model
# (Llama: q/k/v/o/gate/up/down_proj; GPT-2: c_attn, c_proj, c_fc; Phi-3: qkv/o/gate_up/down_proj); plan names them.
KNOWLEDGE_FT_MODULES = "all-linear"


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
                    "the built-in base when it answers more questions by contains-answer: on the held-out third when "
                    "there are 20 or more, else by the rule measured on the frozen corpora; see docs/reading.md)",
    )
    abstain: Literal["auto", "model", "calibrated"] = Field(
        "auto", description="when the system says 'not in the documents': model (when the model's greedy answer says "
                            "it), calibrated (also when the reader's own probability of that phrase, against its answer, "
                            "passes a threshold calibrated on the held-out third of the evaluation questions), or auto "
                            "(model: calibrating cost answers on a frozen corpus; see docs/reading.md)",
    )
    allow_outside_workspace: bool = Field(
        False, description="let `embedder` be a local folder outside the workspace (recorded by its weights hash)"
    )
    # --- reader_model (issue 24) ---
    reader_model: ReaderModelSpec | None = Field(
        None, description="another local model that writes the knowledge answers (built-in alias, Hugging Face id, "
                          "or a local folder; or a mapping like base_model: {id, revision, chat_template, "
                          "quantization}); retrieval and the prompt as without it; `reader` must belong to it; "
                          "unset: base_model answers (docs/reading.md)",
        json_schema_extra=lambda schema: schema["anyOf"].insert(0, {"type": "string"}))  # the id shorthand
    # --- end reader_model ---
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

    @model_serializer(mode="wrap")
    def _unset_reader_model_stays_out(self, handler):
        # spec hashes and stage keys are digests of this dump: a spec without `reader_model` must hash as before
        data = handler(self)
        if self.reader_model is None and isinstance(data, dict):
            data.pop("reader_model", None)
        return data

    @property
    def confine_root(self) -> Path:
        """What symlinks under `documents` must resolve inside: the workspace the spec was loaded with,
        else the documents folder itself."""
        docs = Path(self.documents)
        return self._workspace or (docs if docs.is_dir() else docs.parent).resolve()
