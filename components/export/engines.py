"""What an inference engine needs beside the weights: Ollama's Modelfile, vLLM's launch script and compose file.

Ollama renders prompts with a Go template of its own, not the tokenizer's Jinja chat template, so the
template is translated. Only the ChatML family (`<|im_start|>role\\ncontent<|im_end|>\\n`, the built-in
SmolLM2's) is translated, and only after rendering the Jinja template on sentinel messages proves it is
that shape; any other template is refused with the reason rather than guessed. vLLM reads the Jinja
template itself (`--chat-template`), so it gets the file as it is.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# Sentinels: text no template adds or changes, so where they land shows the template's shape.
_S, _U, _A = "@@SYSTEM@@", "@@USER@@", "@@ASSISTANT@@"
# --max-lora-rank takes one of these values (vllm/config/lora.py, MaxLoRARanks); a smaller r fits a larger slot.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


class TemplateError(ValueError):
    """The chat template is not one this module can translate to Ollama's Go template."""


@dataclass(frozen=True)
class ChatML:
    """A ChatML chat template: what it puts first when the conversation has no system message."""

    default_system: str | None


def _block(role: str, content: str) -> str:
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def chatml_shape(tokenizer) -> ChatML:
    """Prove the tokenizer's chat template is ChatML by rendering it; raise TemplateError naming what differs."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise TemplateError("the tokenizer has no chat template; set base_model.chat_template in the spec")

    def render(messages: list[dict], generation: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    with_system = render([{"role": "system", "content": _S}, {"role": "user", "content": _U},
                          {"role": "assistant", "content": _A}, {"role": "user", "content": _U}], True)
    expected = _block("system", _S) + _block("user", _U) + _block("assistant", _A) + _block("user", _U)
    if with_system != expected + f"{IM_START}assistant\n":
        raise TemplateError(
            "the chat template is not ChatML (<|im_start|>role\\ncontent<|im_end|>); Adaptflow translates only ChatML "
            "to Ollama's Go template. Write TEMPLATE yourself from chat_template.jinja, or export --to gguf / vllm")
    user_only = render([{"role": "user", "content": _U}], True)
    head = user_only.removesuffix(_block("user", _U) + f"{IM_START}assistant\n")
    if head == user_only:
        raise TemplateError("the chat template renders a lone user message in an unexpected way; "
                            "write TEMPLATE yourself from chat_template.jinja")
    if not head:
        return ChatML(None)
    if not (head.startswith(f"{IM_START}system\n") and head.endswith(f"{IM_END}\n")):
        raise TemplateError("the chat template puts something other than a system block before a lone user "
                            "message; write TEMPLATE yourself from chat_template.jinja")
    return ChatML(head[len(f"{IM_START}system\n"):-len(f"{IM_END}\n")])


def go_template(shape: ChatML) -> str:
    """Ollama's TEMPLATE for a ChatML model: every message as a block (Ollama keeps system messages in
    .Messages), the template's own default system block when the conversation opens without one, then the
    assistant's turn."""
    default = ""
    if shape.default_system is not None:
        default = ('{{- if and (eq $i 0) (ne $m.Role "system") }}' + f"{IM_START}system\n{shape.default_system}{IM_END}\n"
                   + "{{ end }}")
    return ("{{- range $i, $m := .Messages }}" + default
            + f"{IM_START}{{{{ $m.Role }}}}\n{{{{ $m.Content }}}}{IM_END}\n" + "{{ end }}" + f"{IM_START}assistant\n")


def _quoted(text: str) -> str:
    """A Modelfile value in triple quotes (which it cannot hold itself)."""
    if '"""' in text:
        raise TemplateError('the text holds """, which a Modelfile cannot quote; remove it from the system prompt')
    return f'"""{text}"""'


def modelfile(gguf_name: str, template: str, system: str | None, stops: list[str], source: str) -> str:
    lines = [f"# {source}, exported by `adaptflow export --to ollama`", f"FROM ./{gguf_name}",
             f"TEMPLATE {_quoted(template)}"]
    if system is not None:
        lines.append(f"SYSTEM {_quoted(system)}")
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    lines.append("PARAMETER temperature 0")  # greedy, as Adaptflow evaluated it
    return "\n".join(lines) + "\n"


def stop_tokens(tokenizer) -> list[str]:
    """The turn markers and the end-of-sequence token: where an answer ends."""
    found = [IM_END, IM_START, tokenizer.eos_token]
    return list(dict.fromkeys(t for t in found if t))


# --- vLLM -------------------------------------------------------------------------------------------


def vllm_max_lora_rank(r: int) -> int:
    fits = [slot for slot in VLLM_LORA_RANKS if slot >= r]
    if not fits:
        raise ValueError(f"LoRA rank {r} is above vLLM's largest --max-lora-rank ({VLLM_LORA_RANKS[-1]}); "
                         "export --to merged and serve the merged folder")
    return fits[0]


@dataclass(frozen=True)
class VllmLaunch:
    """`vllm serve` for one export: the base (or merged) model, optionally one LoRA module on it."""

    model: str  # a hub id or a path, relative paths to the export folder
    served_name: str
    dtype: str  # fp32 | bf16
    lora_rank: int | None = None  # set: serve ./adapter as a LoRA module named `served_name`
    quantization: str | None = None  # "bitsandbytes": the adapter was trained on a 4-bit base

    def args(self) -> list[str]:
        out = ["serve", self.model]
        if self.lora_rank is not None:
            out += ["--enable-lora", "--lora-modules", f"{self.served_name}=./adapter",
                    "--max-lora-rank", str(vllm_max_lora_rank(self.lora_rank))]
        else:
            out += ["--served-model-name", self.served_name]
        if self.quantization:
            out += ["--quantization", self.quantization]
        return out + ["--chat-template", "./chat_template.jinja", "--dtype", VLLM_DTYPES[self.dtype]]


def serve_script(launch: VllmLaunch, notes: list[str]) -> str:
    args = " ".join(shlex.quote(a) for a in launch.args()[2:])
    comments = "".join(f"# {n}\n" for n in notes)
    return ("#!/usr/bin/env bash\n# vLLM's OpenAI-compatible server for this export (pip install vllm; a GPU machine).\n"
            f"{comments}set -euo pipefail\ncd \"$(dirname \"$0\")\"\n"
            f"BASE=\"${{BASE:-{launch.model}}}\"\n"
            f"exec vllm serve \"$BASE\" {args} \"$@\"\n")


def compose_file(launch: VllmLaunch, host_paths: list[str]) -> str:
    """A docker-compose service running the same `vllm serve` in vLLM's image (whose entrypoint is `vllm serve`),
    the export folder mounted at /export; `host_paths` (a local base model) are mounted read-only where they are."""
    command = ", ".join(f'"{a}"' for a in launch.args()[1:])
    volumes = "".join(f"      - {mount}:ro\n" for mount in ["./:/export", *(f"{p}:{p}" for p in host_paths)])
    return (f"# docker compose up: vLLM serving {launch.served_name} on port 8000 (needs the NVIDIA container toolkit)\n"
            "services:\n  vllm:\n    image: vllm/vllm-openai:latest\n    working_dir: /export\n"
            f"    volumes:\n{volumes}    ports:\n      - \"8000:8000\"\n    ipc: host\n"
            "    deploy:\n      resources:\n        reservations:\n          devices:\n"
            "            - driver: nvidia\n              count: 1\n              capabilities: [gpu]\n"
            f"    command: [{command}]\n")
