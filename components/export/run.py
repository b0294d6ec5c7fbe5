"""`export`: a registered system's adapter in the form an inference engine loads, verified before it is called done.

Targets:

- `merged`: the adapter merged into the base (components.methods.merge: a 4-bit base is dequantized first), a transformers
  folder in fp32 (or bf16) with the tokenizer and its chat template.
- `gguf`: that folder converted by llama.cpp's own converter (components.export.gguf) to f16, q8_0 or q4_k_m;
  with `lora`, a GGUF LoRA adapter plus the base's GGUF instead.
- `ollama`: the GGUF, and a Modelfile whose TEMPLATE is the chat template in Go-template form
  (components.export.engines), SYSTEM the system prompt training used, and the stop tokens.
- `vllm`: the peft adapter folder as vLLM loads it (`--enable-lora`), a launch script and a compose file; a method
  vLLM cannot load as a LoRA module is merged and the merged folder served instead.

Every export is checked against the adapted model as Adaptflow serves it (base + adapter, unmerged, fp32) on
prompts from the spec's evaluation set: logits (a stated tolerance) and greedy answers (a stated agreement). The
folder is built next to `out` and renamed into place only after that, with `export.json` (source, digest, target,
tool versions, the verification numbers) inside; a failed check leaves nothing behind.

Engines load weights, not soft prompts: prompt tuning, p-tuning, prefix tuning (and hybrids with one) are
refused for every target, with the reason. Retrieval (an index) stays in Adaptflow; the adapter is exported.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from components.export import engines, gguf
from components.export.check import TOLERANCES, Reference, build_reference, lora_norms_check, run_model
from components.export.source import (
    Base,
    ExportError,
    Source,
    adapter_facts,
    open_base,
    open_source,
    plain_lora,
    trained_system_prompt,
    unmergeable,
)
from components.store.fileio import (
    fsync_tree,
    json_text,
    rename_into_place,
    sha256_file,
    tree_files,
    write_durable,
)

__all__ = ["DTYPES", "TARGETS", "TOLERANCES", "ExportError", "ExportResult", "Source", "export_version"]

TARGETS = ("merged", "gguf", "ollama", "vllm")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MANIFEST = "export.json"
TOOLS = ("torch", "transformers", "peft", "gguf", "safetensors", "sentencepiece", "llama-cpp-python", "adaptflow")


# --- targets -----------------------------------------------------------------------------------------


@dataclass
class Job:
    """One export being built in `folder` (the temp folder beside `out`)."""

    source: Source
    target: str
    folder: Path
    out: Path  # where the folder lands once verified
    dtype: str = "fp32"
    gguf_type: str = "q8_0"
    lora: bool = False
    with_base: bool = False
    device: str | None = None
    facts: dict = field(default_factory=dict)
    verification: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    _base: Base | None = None
    _reference: Reference | None = None

    @property
    def base(self) -> Base:
        if self._base is None:
            self._base = open_base(self.source, self.device)
        return self._base

    @property
    def reference(self) -> Reference:
        if self._reference is None:
            self._reference = build_reference(self.source, self.base)
        return self._reference


def merged_check(job: Job) -> str:
    return "fp32-quantized-base" if job.dtype == "fp32" and job.base.quantized else job.dtype


def build_merged(job: Job, folder: Path) -> None:
    """The merged transformers folder at `folder`, reloaded with from_pretrained and checked."""
    from transformers import AutoModelForCausalLM

    from components.methods.merge import merge_adapter

    reference = job.reference
    report = merge_adapter(job.base.load(), job.source.adapter_dir, folder, tokenizer=job.base.tokenizer,
                           dtype=DTYPES[job.dtype])
    job.facts["merge"] = {k: v for k, v in report.to_dict().items() if k != "out_dir"}
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)  # bf16 weights upcast exactly
    logits, answers = run_model(reloaded, reference)
    job.verification["merged"] = reference.compare(answers, logits, merged_check(job),
                                                   f"the merged folder ({job.dtype}), reloaded with from_pretrained")


def build_gguf(job: Job, out_file: Path) -> None:
    """A merged GGUF at `out_file`: merged folder (scratch) -> llama.cpp's converter -> checked: the header
    (hyperparameters, pre-tokenizer, chat template) against the merged folder, the tensors by their answers."""
    from transformers import AutoConfig

    from components.export.gguf import gguf_metadata, hyperparameter_mismatches, load_gguf_with_transformers

    scratch = Path(tempfile.mkdtemp(prefix=".scratch-", dir=job.folder))
    try:
        build_merged(job, scratch / "merged")
        config = AutoConfig.from_pretrained(scratch / "merged")
        job.facts["gguf"] = gguf.write_gguf(scratch / "merged", out_file, job.gguf_type, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    meta = gguf_metadata(out_file)
    problems = hyperparameter_mismatches(meta, config)
    if meta["tokenizer.chat_template"] != job.base.tokenizer.chat_template:
        problems.append("its chat template is not the tokenizer's")
    if problems:
        raise ExportError(f"{out_file.name} does not match the merged model: {'; '.join(problems)}; nothing was "
                          "written; report it with this line (llama.cpp's converter may have changed)")
    job.facts["gguf"] |= {"file": out_file.name, "type": job.gguf_type, "bytes": out_file.stat().st_size,
                          "architecture": meta["general.architecture"], "pre_tokenizer": meta["tokenizer.ggml.pre"],
                          "hyperparameters": meta["hyperparameters"], "tensor_types": meta["tensor_types"]}
    reference = job.reference
    model = load_gguf_with_transformers(out_file, config)
    logits, answers = run_model(model, reference)
    del model
    job.verification["gguf"] = reference.compare(
        answers, logits, job.gguf_type, f"{out_file.name}'s tensors loaded by transformers (gguf_file=, dequantized)")
    if gguf.llama_cpp_version() is not None:
        found = gguf.llama_cpp_answers(out_file, reference.prompts, reference.max_new_tokens)
        job.verification["llama_cpp"] = reference.compare(
            found, None, job.gguf_type, f"{out_file.name} run by llama.cpp (llama-cpp-python {gguf.llama_cpp_version()})")


def build_gguf_lora(job: Job) -> None:
    """A GGUF LoRA adapter plus the base's GGUF (llama.cpp: -m base --lora adapter); ΔW norms checked."""
    from components.export.gguf import convert_lora

    reason = plain_lora(adapter_facts(job.source.adapter_dir))
    if reason:
        raise ExportError(f"{job.source.ref}: --lora needs a plain LoRA adapter, but {reason}; "
                          "export --to gguf without --lora (the adapter merged)")
    base_dir = Path(job.base.path)
    if job.base.quantized:
        job.notes.append("the adapter was trained on a 4/8-bit base; the base GGUF holds its full-precision weights")
    lora_file = job.folder / f"{job.source.stem}-lora-f16.gguf"
    base_file = job.folder / f"base-{job.gguf_type}.gguf"
    job.facts["gguf"] = {"lora_convert_seconds": round(convert_lora(job.source.adapter_dir, base_dir, lora_file), 2)}
    job.facts["gguf"] |= gguf.write_gguf(base_dir, base_file, job.gguf_type, job.folder)
    job.facts["gguf"] |= {"lora_file": lora_file.name, "base_file": base_file.name, "type": job.gguf_type}
    job.verification["gguf_lora"] = lora_norms_check(job.source.adapter_dir, lora_file)
    job.commands.append(f"llama-cli -m {job.out / base_file.name} --lora {job.out / lora_file.name} -cnv")
    if gguf.llama_cpp_version() is not None:
        reference = job.reference
        found = gguf.llama_cpp_answers(base_file, reference.prompts, reference.max_new_tokens, lora=lora_file)
        job.verification["llama_cpp"] = reference.compare(found, None, job.gguf_type, "base GGUF + GGUF LoRA in llama.cpp")


def build_ollama(job: Job) -> None:
    from components.export.engines import chatml_shape, go_template, modelfile, stop_tokens

    try:
        template = go_template(chatml_shape(job.base.tokenizer))
    except engines.TemplateError as exc:
        raise ExportError(f"{job.source.ref}: {exc}") from None
    out_file = job.folder / f"{job.source.stem}-{job.gguf_type}.gguf"
    build_gguf(job, out_file)
    system = trained_system_prompt(job.source.spec)
    if system is None:
        job.notes.append("no SYSTEM line: training used no single system prompt (or its data is gone); "
                         "the template adds the chat template's own default system message")
    text = modelfile(out_file.name, template, system, stop_tokens(job.base.tokenizer), job.source.ref)
    (job.folder / "Modelfile").write_text(text, encoding="utf-8")
    job.facts["ollama"] = {"system": system, "stops": stop_tokens(job.base.tokenizer)}
    job.commands.append(f"ollama create {job.source.name} -f {job.out / 'Modelfile'}")


def build_vllm(job: Job) -> None:
    from components.export.engines import VllmLaunch, compose_file, serve_script

    facts = adapter_facts(job.source.adapter_dir)
    reason = plain_lora(facts)
    base_spec = job.source.spec.base_model
    local_base = isinstance(job.base.path, Path)
    model = str(job.base.path)
    if job.with_base and local_base:
        shutil.copytree(job.base.path, job.folder / "base", ignore=shutil.ignore_patterns("*.lock", "adaptflow-*"))
        model = "./base"
    if reason is None:
        shutil.copytree(job.source.adapter_dir, job.folder / "adapter")
        job.verification["vllm"] = vanilla_peft_check(job)
        quantization = "bitsandbytes" if base_spec.quantization is not None else None
        launch = VllmLaunch(model, job.source.name, job.dtype, int(facts["config"]["r"]), quantization)
    else:
        job.notes.append(f"vLLM serves LoRA modules only, and {reason}: the adapter is merged into ./model instead")
        build_merged(job, job.folder / "model")
        job.verification["vllm"] = job.verification.pop("merged")
        launch, model = VllmLaunch("./model", job.source.name, job.dtype), "./model"
    if local_base and model == str(job.base.path) and launch.lora_rank is not None:
        job.notes.append(f"BASE is this machine's copy of {base_spec.id} ({model}); elsewhere set BASE=... to a copy "
                         "of the same weights, or export again with --with-base")
        if job.base.builtin:
            job.notes.append(f"{base_spec.id} is Adaptflow's float32 copy of a quantized GGUF: the adapter was trained "
                             "on those weights, which differ from the hub's unquantized checkpoint")
    (job.folder / "chat_template.jinja").write_text(job.base.tokenizer.chat_template, encoding="utf-8")
    script = job.folder / "serve.sh"
    script.write_text(serve_script(launch, job.notes), encoding="utf-8")
    script.chmod(0o755)
    host = [model] if local_base and model.startswith("/") else []
    (job.folder / "docker-compose.yml").write_text(compose_file(launch, host), encoding="utf-8")
    job.facts["vllm"] = {"args": launch.args()}
    job.commands.append(f"{job.out / script.name}  # or: docker compose -f {job.out / 'docker-compose.yml'} up")


def vanilla_peft_check(job: Job) -> dict:
    """The copied folder loads with vanilla PeftModel.from_pretrained (as vLLM reads peft's format) and gives
    the adapted model's logits and answers."""
    from peft import PeftModel

    reference = job.reference
    model = PeftModel.from_pretrained(job.base.load(), job.folder / "adapter")
    logits, answers = run_model(model, reference)
    return reference.compare(answers, logits, "fp32", "./adapter loaded with vanilla PeftModel.from_pretrained")


# --- the export --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    out: Path
    manifest: dict

    @property
    def commands(self) -> list[str]:
        return self.manifest["commands"]


def check_request(target: str, dtype: str, gguf_type: str, lora: bool) -> None:
    if target not in TARGETS:
        raise ExportError(f"--to '{target}' is not a target; use one of {', '.join(TARGETS)}")
    if dtype not in DTYPES:
        raise ExportError(f"--dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    if gguf_type not in gguf.GGUF_TYPES:
        raise ExportError(f"--gguf-type '{gguf_type}' is not one of {', '.join(gguf.GGUF_TYPES)}")
    if lora and target != "gguf":
        raise ExportError("--lora writes a GGUF LoRA adapter; use it with --to gguf")
    if target in ("gguf", "ollama") and (reason := gguf.quantize_refusal(gguf_type)):
        raise ExportError(reason)


def check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; give a folder path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"--out {out} exists and is not empty; choose another folder or pass --force to replace it")


def refusal(source: Source, target: str) -> str | None:
    if source.adapter_dir is None:
        return (f"{source.ref} has no adapter: its answers come from retrieval over its index, which stays in "
                "Adaptflow; serve it with `adaptflow serve`")
    if reason := unmergeable(adapter_facts(source.adapter_dir)):
        return f"{source.ref} cannot be exported --to {target}: {reason}; serve it with `adaptflow serve`"
    return None


def export_version(registry, ref: str, target: str, out: Path, *, dtype: str = "fp32", gguf_type: str = "q8_0",
                   lora: bool = False, force: bool = False, with_base: bool = False,
                   device: str | None = None) -> ExportResult:
    """Export `ref` (NAME, NAME@vN, NAME@alias) --to `target` into the folder `out`, verified; see the module doc."""
    check_request(target, dtype, gguf_type, lora)
    out = Path(out).absolute()
    check_out(out, force)
    source = open_source(registry, ref)
    if reason := refusal(source, target):
        raise ExportError(reason)
    started = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        job = Job(source, target, tmp, out, dtype, gguf_type, lora, with_base, device)
        BUILDERS[target](job)
        if source.has_index:
            job.notes.append("this system also retrieves from its index; retrieval (and its citations) stays in "
                             "Adaptflow: the export is the adapter alone, `adaptflow serve` serves both")
        manifest = export_manifest(job, time.time() - started)
        write_durable(tmp / MANIFEST, json_text(manifest))
        fsync_tree(tmp)
        check_out(out, force)  # nothing appeared there meanwhile
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        tmp.chmod(0o755)  # mkdtemp's 0700 would make the export private to this user
        rename_into_place(tmp, out, existing="replace" if force else "error")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, manifest)


def _merged_target(job: Job) -> None:
    build_merged(job, job.folder)
    job.commands.append(f"AutoModelForCausalLM.from_pretrained({str(job.out)!r})")


def _gguf_target(job: Job) -> None:
    if job.lora:
        build_gguf_lora(job)
        return
    out_file = job.folder / f"{job.source.stem}-{job.gguf_type}.gguf"
    build_gguf(job, out_file)
    job.commands.append(f"llama-cli -m {job.out / out_file.name} -cnv")


def _ollama_target(job: Job) -> None:
    build_ollama(job)


BUILDERS: dict[str, Callable[[Job], None]] = {"merged": _merged_target, "gguf": _gguf_target,
                                              "ollama": _ollama_target, "vllm": build_vllm}


def tool_versions(converter: bool) -> dict[str, str]:
    from components.registry import library_versions

    found = library_versions(TOOLS)
    if converter:
        found["llama.cpp converter"] = gguf.converter_version(gguf.converter_dir())
    return found


def export_manifest(job: Job, seconds: float) -> dict:
    source, files = job.source, tree_files(job.folder)
    facts = adapter_facts(source.adapter_dir)
    return {
        "source": source.ref, "content_digest": source.digest, "target": job.target,
        "options": {"dtype": job.dtype, "gguf_type": job.gguf_type if job.target in ("gguf", "ollama") else None,
                    "lora": job.lora, "with_base": job.with_base},
        "method": facts["method"], "peft_type": facts["peft_type"],
        "base_model": {k: (source.manifest.get("base_model") or {}).get(k) for k in ("id", "revision", "weights_hash")},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "seconds": round(seconds, 1),
        "device": str(job.device or ("cuda" if torch.cuda.is_available() else "cpu")),
        "tools": tool_versions(job.target in ("gguf", "ollama")),
        "verification": job.verification, "facts": job.facts, "notes": job.notes, "commands": job.commands,
        "files": {rel: sha256_file(job.folder / rel) for rel in files},
    }
