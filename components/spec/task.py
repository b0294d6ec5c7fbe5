"""`TaskSpec`, the whole spec file: its sections and the checks across them. Imported last: it also
registers the models that hold the adapter union, so that a method defined later is rebuilt into them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from components.spec.base import Strict
from components.spec.behavior import BehaviorSpec
from components.spec.compare import CompareSpec, ComposeSpec
from components.spec.evaluation import EvaluationSpec
from components.spec.knowledge import KnowledgeSpec
from components.spec.methods import _USES_ADAPTERS, NEEDS_QUANTIZED_BASE, WEIGHT_METHODS, HybridSpec
from components.spec.model import BaseModelSpec

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
        self._check_reader_model()
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

    @property
    def reading_model(self) -> BaseModelSpec:
        """The model that writes the answers: `knowledge.reader_model` when set, else `base_model`."""
        reader = self.knowledge.reader_model if self.knowledge is not None else None
        return reader if reader is not None else self.base_model

    def _check_reader_model(self) -> None:
        """`knowledge.reader_model` replaces the generating model of a retrieval-only system (docs/reading.md)."""
        if self.knowledge is None or self.knowledge.reader_model is None:
            return
        if self.behavior is not None:
            raise ValueError(
                f"knowledge.reader_model is '{self.knowledge.reader_model.id}' but the spec trains a `behavior:` adapter "
                f"on base_model '{self.base_model.id}', and one system generates with one model; remove "
                "knowledge.reader_model (the adapter then reads the context), or move the behavior examples to another spec")
        if self.knowledge.inject != "rag":
            raise ValueError(
                f"knowledge.reader_model is set but knowledge.inject is '{self.knowledge.inject}': the documents are "
                f"trained into an adapter of base_model '{self.base_model.id}', which another model cannot carry; use "
                "inject: rag, or set base_model.id to the reader model instead")

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
