"""GGUF files with llama.cpp's own converter, obtained without a network at run time.

llama.cpp's `convert_hf_to_gguf.py` (and `convert_lora_to_gguf.py`) is the reference writer of GGUF: it knows
each architecture's tensor names and layouts, the tokenizer's pre-tokenizer, and the chat template key, and
every llama.cpp release changes it. It ships in llama.cpp's source, not in any wheel; the `llama-cpp-python`
sdist vendors one (vendor/llama.cpp/). `make export-tools` downloads that sdist into the virtual environment
(`$VENV/share/adaptflow/`); the first GGUF export unpacks only the converter (the scripts, their `conversion/`
package, the `gguf-py` it was written against, the licence) into `$ADAPTFLOW_HOME/tools/`, checking the sdist's
sha256, and each later one checks the unpacked files against their recorded hashes. Nothing is edited. `ADAPTFLOW_LLAMA_CPP=/path/to/llama.cpp` uses a checkout instead.

The converter runs in a subprocess on the vendored `gguf-py`: the PyPI `gguf==0.19.0` lacks `LazyChunkedTensor`,
which this converter needs (`NO_LOCAL_GGUF=1` fails with AttributeError). It needs `sentencepiece` importable
even for a BPE tokenizer (it tries a SentencePiece vocabulary first).

Types: f16 and q8_0 come from the converter. q4_k_m needs llama.cpp's compiled quantizer: taken from
llama-cpp-python (`llama_model_quantize`) when it is installed, refused with that reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from importlib import metadata, util
from pathlib import Path

from filelock import FileLock

from components.store.fileio import adaptflow_home, publish_verified_dir, sha256_file, verify_dir

LLAMA_CPP_PYTHON = "0.3.36"  # the llama-cpp-python sdist whose vendored llama.cpp converter is used
SDIST = f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
ENV_CHECKOUT = "ADAPTFLOW_LLAMA_CPP"  # a llama.cpp source checkout to take the converter from
ENV_SDIST = "ADAPTFLOW_LLAMA_CPP_SDIST"  # the sdist, when it is not where `make export-tools` puts it
VENDORED = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
KEEP = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
MARKER = "adaptflow-converter.json"
CONVERTER_TYPES = ("f16", "q8_0")  # written by convert_hf_to_gguf.py itself
QUANTIZED_TYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}  # llama.cpp's file types, via llama_model_quantize
GGUF_TYPES = (*CONVERTER_TYPES, *QUANTIZED_TYPES)
CONVERT_TIMEOUT_S = 3600


class ConverterError(RuntimeError):
    """llama.cpp's converter is missing, or it failed; the message says what to do."""


def sdist_path() -> Path:
    return Path(os.environ.get(ENV_SDIST) or Path(sys.prefix) / "share" / "adaptflow" / SDIST)


def converter_dir() -> Path:
    """The folder holding convert_hf_to_gguf.py: a checkout named by $ADAPTFLOW_LLAMA_CPP, or the sdist's copy
    unpacked (once) under $ADAPTFLOW_HOME/tools."""
    if checkout := os.environ.get(ENV_CHECKOUT):
        folder = Path(checkout).expanduser()
        if not (folder / "convert_hf_to_gguf.py").is_file():
            raise ConverterError(f"${ENV_CHECKOUT}={checkout} holds no convert_hf_to_gguf.py; point it at a llama.cpp "
                                 "source checkout, or unset it to use the pinned llama-cpp-python sdist")
        return folder
    target = adaptflow_home() / "tools" / f"llama.cpp-{LLAMA_CPP_PYTHON}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / MARKER).exists() and verify_dir(target, json.loads((target / MARKER).read_text())["files"]):
            shutil.rmtree(target)  # a file changed since it was unpacked: unpack again, never run an edited copy
        if not (target / MARKER).exists():
            shutil.rmtree(target, ignore_errors=True)
            unpack_converter(sdist_path(), target)
    return target


def unpack_converter(sdist: Path, target: Path) -> dict:
    """Extract the converter's files from the llama-cpp-python sdist into `target` (atomic; sha256 checked)."""
    if not sdist.is_file():
        raise ConverterError(
            f"llama.cpp's GGUF converter is not installed ({sdist} is missing); run `make export-tools` (it downloads "
            f"the llama-cpp-python=={LLAMA_CPP_PYTHON} sdist), or set ${ENV_SDIST} to that file, or ${ENV_CHECKOUT} "
            "to a llama.cpp checkout")
    digest = sha256_file(sdist)
    if sdist.name == SDIST and digest != SDIST_SHA256:
        raise ConverterError(f"{sdist} has sha256 {digest[:12]}..., not the pinned {SDIST_SHA256[:12]}...; "
                             "delete it and run `make export-tools` again")

    def fill(tmp: Path) -> None:
        with tarfile.open(sdist, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(VENDORED)
                       and m.name[len(VENDORED):].startswith(KEEP) and (m.isfile() or m.isdir())]
            if not any(m.name.endswith("/convert_hf_to_gguf.py") for m in members):
                raise ConverterError(f"{sdist} holds no {VENDORED}convert_hf_to_gguf.py; use the "
                                     f"llama-cpp-python=={LLAMA_CPP_PYTHON} sdist")
            for member in members:
                member.name = member.name[len(VENDORED):]
            tar.extractall(tmp, members=members, filter="data")

    return publish_verified_dir(target, fill, MARKER, lambda facts: {
        "sdist": sdist.name, "sdist_sha256": digest, "files": {rel: f["sha256"] for rel, f in facts.items()}})


def converter_version(folder: Path) -> str:
    if (folder / MARKER).exists():
        return f"llama.cpp converter vendored in llama-cpp-python=={LLAMA_CPP_PYTHON} (sdist)"
    return f"llama.cpp checkout at {folder}"


def _run(args: list[str], what: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # the vendored gguf-py, see above
    env.setdefault("HF_HUB_OFFLINE", "1")
    started = time.time()
    try:
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                              timeout=CONVERT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ConverterError(f"{what} ran over {CONVERT_TIMEOUT_S} s and was stopped") from None
    if done.returncode != 0:
        tail = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()][-1:] or ["no output"]
        hint = "; install sentencepiece (pip install sentencepiece)" if "sentencepiece" in tail[0] else ""
        raise ConverterError(f"{what} failed (exit {done.returncode}): {tail[0].strip()}{hint}")
    return time.time() - started


def convert_model(model_dir: Path, out_file: Path, outtype: str) -> float:
    """convert_hf_to_gguf.py on a transformers folder; f16 or q8_0. Returns the seconds it took."""
    if outtype not in CONVERTER_TYPES:
        raise ValueError(f"the converter writes {', '.join(CONVERTER_TYPES)}, not {outtype}")
    script = converter_dir() / "convert_hf_to_gguf.py"
    return _run([str(script), str(model_dir), "--outfile", str(out_file), "--outtype", outtype],
                f"llama.cpp's convert_hf_to_gguf.py on {model_dir}")


def convert_lora(adapter_dir: Path, base_dir: Path, out_file: Path, outtype: str = "f16") -> float:
    """convert_lora_to_gguf.py: a peft LoRA folder as a GGUF LoRA adapter for the GGUF of `base_dir`."""
    script = converter_dir() / "convert_lora_to_gguf.py"
    return _run([str(script), str(adapter_dir), "--base", str(base_dir), "--outfile", str(out_file),
                 "--outtype", outtype], f"llama.cpp's convert_lora_to_gguf.py on {adapter_dir}")


def llama_cpp_version() -> str | None:
    """llama-cpp-python's version when it is installed (a C++ build; no wheel is published for Linux)."""
    if util.find_spec("llama_cpp") is None:
        return None
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return "unknown"


def quantize_refusal(gguf_type: str) -> str | None:
    """Why `gguf_type` cannot be written here, or None."""
    if gguf_type in QUANTIZED_TYPES and llama_cpp_version() is None:
        return (f"--gguf-type {gguf_type} needs llama.cpp's compiled quantizer, which comes with llama-cpp-python "
                "(a C++ build: CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" pip install llama-cpp-python); it is not installed, "
                f"so use {' or '.join(CONVERTER_TYPES)}")
    return None


QUANTIZE = """import ctypes, sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, sys.argv[3])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)))
"""


def quantize(f16_file: Path, out_file: Path, gguf_type: str) -> float:
    """llama.cpp's own quantizer (llama-cpp-python's llama_model_quantize) from an f16 GGUF, in a subprocess:
    it prints a line per tensor to the C stderr, and a crash there must not take this process with it."""
    return _run(["-c", QUANTIZE, str(f16_file), str(out_file), QUANTIZED_TYPES[gguf_type]],
                f"llama.cpp's quantizer ({gguf_type}) on {f16_file.name}")


def write_gguf(model_dir: Path, out_file: Path, gguf_type: str, scratch: Path) -> dict:
    """A GGUF of a transformers folder in `gguf_type`; {"convert_seconds", "quantize_seconds"?}."""
    if gguf_type in CONVERTER_TYPES:
        return {"convert_seconds": round(convert_model(model_dir, out_file, gguf_type), 2)}
    f16 = scratch / "model-f16.gguf"
    facts = {"convert_seconds": round(convert_model(model_dir, f16, "f16"), 2)}
    facts["quantize_seconds"] = round(quantize(f16, out_file, gguf_type), 2)
    f16.unlink()
    return facts


# --- reading a GGUF back ------------------------------------------------------------------------------


# GGUF hyperparameter (after "<arch>.") -> the transformers config attribute llama.cpp's loader reads it as
HYPERPARAMETERS = {"block_count": "num_hidden_layers", "embedding_length": "hidden_size",
                   "feed_forward_length": "intermediate_size", "attention.head_count": "num_attention_heads",
                   "attention.head_count_kv": "num_key_value_heads", "attention.layer_norm_rms_epsilon": "rms_norm_eps",
                   "rope.freq_base": "rope_theta"}
HEADER_KEYS = ("general.architecture", "tokenizer.ggml.pre", "tokenizer.chat_template", "tokenizer.ggml.eos_token_id")


def gguf_metadata(path: Path) -> dict:
    """HEADER_KEYS, the architecture's HYPERPARAMETERS and the tensor types of a GGUF (gguf's own reader)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    fields = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("tokenizer.ggml.tokens")
              and name not in ("tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")}
    arch = fields.get("general.architecture")
    out = {key: fields.get(key) for key in HEADER_KEYS}
    out["hyperparameters"] = {key: fields[f"{arch}.{key}"] for key in HYPERPARAMETERS if f"{arch}.{key}" in fields}
    out["tensors"] = len(reader.tensors)
    out["tensor_types"] = sorted({t.tensor_type.name for t in reader.tensors})
    return out


def hyperparameter_mismatches(meta: dict, config) -> list[str]:
    """The GGUF's hyperparameters that differ from the transformers config it was converted from."""
    wrong = []
    for key, attr in HYPERPARAMETERS.items():
        if key not in meta["hyperparameters"]:
            continue
        want = (getattr(config, "rope_parameters", None) or {}).get("rope_theta") if attr == "rope_theta" else \
            getattr(config, attr, None)
        got = meta["hyperparameters"][key]
        if want is not None and abs(float(got) - float(want)) > 1e-6 * max(1.0, abs(float(want))):
            wrong.append(f"{key} {got} (config {attr} {want})")
    return wrong


def load_gguf_with_transformers(path: Path, config=None):
    """The GGUF's tensors as a transformers model (dequantized to float32): how it is checked without llama.cpp.
    `config` skips reading the hyperparameters a second time (compare them with `hyperparameter_mismatches`)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"config": config} if config is not None else {}
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32, **kwargs).eval()


def llama_cpp_answers(path: Path, prompts: list[str], max_new_tokens: int, lora: Path | None = None) -> list[str]:
    """Greedy answers from llama.cpp itself (llama-cpp-python), on already rendered prompts."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=0, n_threads=1,
                verbose=False, seed=0)
    answers = []
    for prompt in prompts:
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        out = llm.create_completion(ids, max_tokens=max_new_tokens, temperature=0.0, top_k=1)
        answers.append(out["choices"][0]["text"].strip())
    return answers
