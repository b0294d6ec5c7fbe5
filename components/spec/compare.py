"""The `compare:` section (several adapter variants of one spec, one chosen) and the `compose:` section
(a new system from registered LoRA systems)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.spec.base import Strict
from components.spec.methods import AdapterSpec, MethodName

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
