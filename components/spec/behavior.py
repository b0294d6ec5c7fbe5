"""The `behavior:` section: its data, its training settings (and distributed training), and the
section itself, which holds an adapter method (components.spec.methods)."""

from __future__ import annotations

import difflib
from typing import Annotated, Literal

from pydantic import (
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from components.spec.base import MAX_SEQ_LEN, MAX_STEPS, SpecPath, Strict
from components.spec.methods import NO_CHECKPOINTING, AdapterSpec, LoraSpec

# --- behavior: data, training (its adapter methods: components.spec.methods) -----------------


# The fields each row format reads (components.training.data), required ones first: what `columns` may map.
DATA_FIELDS = {
    "chat": ("messages",),
    "instruction": ("instruction", "output", "input"),
    "completion": ("prompt", "completion"),
    "sharegpt": ("conversations", "system"),
}


class ShareGPTTagsSpec(Strict):
    """How a ShareGPT file spells its turns: LLaMA-Factory's `dataset_info.json` `tags`, with its defaults."""

    role_tag: str = Field("from", min_length=1, description="the turn's key that holds who speaks")
    content_tag: str = Field("value", min_length=1, description="the turn's key that holds the text")
    user_tag: str = Field("human", min_length=1)
    assistant_tag: str = Field("gpt", min_length=1)
    system_tag: str = Field("system", min_length=1)
    observation_tag: str = Field("observation", min_length=1, description="a tool result turn: refused")
    function_tag: str = Field("function_call", min_length=1, description="a tool call turn: refused")

    @model_validator(mode="after")
    def _distinct(self) -> ShareGPTTagsSpec:
        roles = {k: v for k, v in self.model_dump().items() if k not in ("role_tag", "content_tag")}
        seen: dict[str, str] = {}
        for key, value in roles.items():
            if value in seen:
                raise ValueError(f"{seen[value]} and {key} are both '{value}': each role needs its own tag; fix one")
            seen[value] = key
        if self.role_tag == self.content_tag:
            raise ValueError(f"role_tag and content_tag are both '{self.role_tag}'; a turn keeps them in two keys")
        return self


class BehaviorDataSpec(Strict):
    train: SpecPath = Field(description="a .jsonl, .json (array or JSON Lines), .csv or .parquet file, a folder "
                            "written by Hugging Face `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (its "
                            "`train` split), or a folder of .parquet files laid out as on the Hugging Face Hub "
                            "(data/train-00000-of-00001.parquet: the split from the file or folder name)")
    eval: SpecPath | None = Field(None, description="held-out rows in any of train's file types; unset with a "
                                  "DatasetDict as train: its `validation` or `test` split, if it has one")
    format: Literal["chat", "instruction", "completion", "sharegpt"] = Field(
        "chat", description="chat: messages [{role, content}]; instruction: instruction, input?, output; completion: "
        "prompt, completion; sharegpt: conversations [{from: human|gpt|system, value}], system?"
    )
    eval_split: float = Field(0.1, ge=0.0, lt=0.9, description="held out of train when `eval` is not given")
    over_length: Literal["truncate", "drop", "error"] = "truncate"
    columns: dict[str, Annotated[str, StringConstraints(min_length=1)]] | None = Field(
        None, description="the format's field -> the column (key) your file uses for it, e.g. {instruction: "
        "question, output: answer}; unmapped fields keep their names"
    )
    tags: ShareGPTTagsSpec | None = Field(
        None, description="format sharegpt: how the file spells its turns, as LLaMA-Factory's dataset_info tags, "
        "e.g. {role_tag: role, content_tag: content, user_tag: user, assistant_tag: assistant}; unset: from/value "
        "with human (or user), gpt (or assistant) and system"
    )

    @field_validator("columns")
    @classmethod
    def _columns_name_fields_of_the_format(cls, columns: dict[str, str] | None, info: ValidationInfo):
        fmt = info.data.get("format")
        fields = DATA_FIELDS.get(fmt, ())
        for ours in columns or {}:
            if fmt is not None and ours not in fields:
                guess = difflib.get_close_matches(ours, fields, n=1, cutoff=0.5)
                hint = f"did you mean '{guess[0]}'? " if guess else ""
                raise ValueError(
                    f"'{ours}' is not a field of format '{fmt}' ({', '.join(fields)}); {hint}keys are the format's "
                    "field names, values your file's column names"
                )
        return columns

    @field_validator("tags")
    @classmethod
    def _tags_are_sharegpts(cls, tags: ShareGPTTagsSpec | None, info: ValidationInfo):
        fmt = info.data.get("format")
        if tags is not None and fmt is not None and fmt != "sharegpt":
            raise ValueError(f"tags spell the turns of format sharegpt, but format is '{fmt}'; set format: sharegpt "
                             "or remove tags")
        return tags

    @model_serializer(mode="wrap")
    def _unset_columns_stay_out(self, handler):
        # spec hashes and stage keys are digests of this dump: a spec without `columns` or `tags` must hash as before
        data = handler(self)
        for key in ("columns", "tags"):
            if getattr(self, key) is None and isinstance(data, dict):
                data.pop(key, None)
        return data


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
        from components.spec.accelerate import check

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
        from components.spec.accelerate import problem

        dist = self.training.distributed
        if dist is not None and (why := problem(dist.config, self.adapter.method)):
            raise ValueError(why)
        return self
