"""The `base_model:` section: which model to adapt, its pin when it runs remote code, its quantization."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, model_validator

from components.spec.base import (
    BUILTIN_BASES,
    BUILTIN_MODEL,
    CHAT_TEMPLATES,
    Strict,
    _local_folder,
    _resolve_path,
)
from components.spec.remote_code import RemoteCodeError, check_pin

# --- base model --------------------------------------------------------------------------


class QuantizationSpec(Strict):
    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True


class BaseModelSpec(Strict):
    id: str = Field(BUILTIN_MODEL, description="built-in alias (smollm2-135m-instruct, gemma3-270m), Hugging Face id, "
                                               "or a local folder (relative to the spec)")
    revision: str | None = Field(
        None, description="with trust_remote_code: a full 40-hex commit, or for a local folder the sha256 of its "
        "*.py files (python -m components.spec.remote_code FOLDER)"
    )
    trust_remote_code: bool = False
    chat_template: str | None = Field(
        None, description="for a base whose tokenizer has none (or to replace it): chatml, gemma, or a Jinja file "
                          "(relative to the spec) written as a tokenizer chat_template"
    )
    quantization: QuantizationSpec | None = None
    allow_outside_workspace: bool = Field(
        False, description="let `id` be a local folder outside the workspace (recorded by its weights hash)"
    )

    _where: ClassVar[str] = "base_model"  # the key path errors name (ReaderModelSpec: knowledge.reader_model)

    @model_validator(mode="after")
    def _resolve_and_pin(self, info: ValidationInfo) -> BaseModelSpec:
        where = self._where
        if self.chat_template is not None and self.chat_template not in CHAT_TEMPLATES:
            try:
                path = _resolve_path(Path(self.chat_template), info)
            except ValueError as exc:
                raise ValueError(f"{where}.chat_template: {exc}; or name one of {', '.join(CHAT_TEMPLATES)}") from None
            if (info.context or {}).get("base_dir") is not None and not path.is_file():
                raise ValueError(f"{where}.chat_template: {path} is not a file; give a Jinja template file or one "
                                 f"of {', '.join(CHAT_TEMPLATES)}")
            object.__setattr__(self, "chat_template", str(path))
        if self.id not in BUILTIN_BASES:  # frozen model: the resolved folder replaces the id as written
            resolved = _local_folder(self.id, f"{where}.id", f"{where}.allow_outside_workspace",
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


class ReaderModelSpec(BaseModelSpec):
    """`knowledge.reader_model`: another local model that writes the knowledge answers (docs/reading.md). Resolved,
    pinned and templated like `base_model`; written as a string, it is the `id`."""

    _where: ClassVar[str] = "knowledge.reader_model"

    @model_validator(mode="before")
    @classmethod
    def _id_shorthand(cls, value: Any) -> Any:
        return {"id": value} if isinstance(value, str) else value
