"""Generation helpers shared by the served system: batched `generate`, sampling settings, a prepared prompt."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from adaptflow.system.types import Citation

__all__ = ["Prepared", "PromptTooLong", "eos_ids", "generate_texts", "prompt_logprobs", "sampling_kwargs",
           "soft_prompt_prefill"]


def sampling_kwargs(temperature: float = 0.0, top_p: float = 1.0) -> dict:
    """Greedy at temperature 0 (evaluation), sampling otherwise (the server's OpenAI parameters)."""
    if temperature <= 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p}


def generate_texts(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 8,
                   temperature: float = 0.0, top_p: float = 1.0,
                   on_batch: Callable[[int, int], None] | None = None) -> list[str]:
    """Batched, left-padded generation (greedy by default); returns the new text of each prompt, in order.

    Prompts are batched by token length so a batch pads to similar lengths (retrieval prompts vary by
    hundreds of tokens); `on_batch(done, total)` reports progress after each batch.
    """
    import torch

    tokenizer.padding_side = "left"
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    outputs: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.inference_mode():
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                **sampling_kwargs(temperature, top_p),
            )
        new = out[:, enc["input_ids"].shape[1]:]
        for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True), strict=True):
            outputs[i] = text.strip()
        if on_batch is not None:
            on_batch(min(start + batch_size, len(order)), len(order))
    return outputs


def prompt_logprobs(model, ids: list[int], top: int = 0) -> list:
    """Each of `ids`' log-probability given the ones before it, from one forward pass of `model` (None for the
    first, which has no context), with the `top` most likely tokens at each position.

    A soft prompt's virtual tokens (prompt tuning, p-tuning) come before the row's own logits: they are read and
    not returned; a prefix is in the cache and has no logits. Call it under the base's lock."""
    import torch

    from components.serving.sampling import scored

    if not ids:
        return []
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0, -len(ids):]
    return [None, *scored(logits[:-1], ids[1:], top)]


def eos_ids(model, tokenizer) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(ids if isinstance(ids, list) else [ids])
    return {i for i in ids | {tokenizer.eos_token_id} if i is not None}


class PromptTooLong(ValueError):
    """The prompt (with its retrieved chunks) and max_tokens do not fit the model's context (HTTP 400)."""


@dataclass
class Prepared:
    """A request's prompt as token ids, with the chunks retrieved for it."""

    ids: list[int]
    citations: list[Citation]
    retrieval_ms: float = 0.0
    user_text: str = ""  # the last user message as the model read it (context and question): the abstention reads it


def soft_prompt_prefill(model, ids, mask):
    """Prefill left-padded rows of one prompt-learning system (a PeftModel; a hybrid's outer one) by hand, not
    through peft's forward, which puts the virtual tokens before the padding and drops position ids. Here each
    row is [virtual tokens or prefix][its padding][its tokens] with explicit positions, so the rows batch, and
    their caches merge and decode one token per step on `model.get_base_model()` like any other rows.

    Returns (last logits per row, the KV cache, the attention mask over the cache)."""
    import torch
    from transformers import DynamicCache

    config = model.active_peft_config
    n, virtual = ids.shape[0], config.num_virtual_tokens
    full = torch.cat([mask.new_ones(n, virtual), mask], dim=1)
    positions = (full.cumsum(-1) - 1).clamp(min=0)
    base = model.get_base_model()
    if config.peft_type == "PREFIX_TUNING":  # the prefix is the cache's first `virtual` positions
        cache = model.get_prompt(batch_size=n)
        out = base(input_ids=ids, attention_mask=full, position_ids=positions[:, virtual:], cache=cache, use_cache=True,
                   logits_to_keep=1)
    else:  # prompt tuning, p-tuning: the virtual tokens are input embeddings before the row's own
        embeds = model.word_embeddings(ids)
        prompts = model.get_prompt(batch_size=n).to(embeds.dtype)
        cache = DynamicCache()
        out = base(inputs_embeds=torch.cat([prompts, embeds], dim=1), attention_mask=full, position_ids=positions,
                   cache=cache, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1].float().cpu(), cache, full.cpu()
