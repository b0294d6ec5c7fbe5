"""`/v1/completions` with `echo` and `logprobs` (what lm-evaluation-harness's loglikelihood requests send), over
real registered systems of several method families, against the oracle: a vanilla `PeftModel.from_pretrained` of
the same adapter on a fresh copy of the base, its log_softmax at each position."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from peft import PeftModel
from transformers import AutoModelForCausalLM

from components.methods.io import save_adapter
from components.methods.registry import apply_method
from components.registry import Registry
from components.registry.lineage import manifest_base
from components.spec import TaskSpec
from flows.api import create_app
from tests.conftest import make_tiny_llama, save_tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")
TOP = 3
PROMPTS = ["The harbor opened in 1871 and has nine piers.", "My card was charged twice this month."]
METHODS = {  # registry name: adapter section (each a different serving path: shared lane, its own lane, soft prompt)
    "lp-lora": {"method": "lora", "r": 2},
    "lp-ia3": {"method": "ia3"},
    "lp-prompt": {"method": "prompt_tuning", "num_virtual_tokens": 3},
    "lp-prefix": {"method": "prefix_tuning", "num_virtual_tokens": 3},
}


def spec_for(base: Path, name: str, adapter: dict) -> TaskSpec:
    data = {"name": name, "goal": "behavior", "base_model": {"id": str(base)},
            "behavior": {"data": {"train": "train.jsonl"}, "adapter": adapter}}
    return TaskSpec.model_validate(data, context={"check_exists": False})


def register(reg: Registry, tokenizer, base: Path, name: str, adapter: dict, seed: int, work: Path) -> Path:
    """An untrained adapter with random (non-identity) weights, published as `adapt` publishes one; returns it."""
    spec = spec_for(base, name, adapter)
    model = apply_method(make_tiny_llama(tokenizer), spec.behavior.adapter, tokenizer=tokenizer)
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.5)
    staging = work / name
    save_adapter(model, spec.behavior.adapter, staging / "adapter")
    record = {"id": str(base), "revision": None, "weights_hash": None, "path": str(base)}
    reg.publish(name, staging, manifest_base(spec, base_model=record))
    return staging / "adapter"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("logprobs")
    base = save_tiny_llama(root / "base", tokenizer, tie_word_embeddings=False)
    reg = Registry(root / "registry")
    adapters = {name: register(reg, tokenizer, base, name, adapter, seed, root / "staging")
                for seed, (name, adapter) in enumerate(METHODS.items(), 1)}
    # a base that ends every generation at once: its final norm is zero, so every logit is 0, greedy takes token 0,
    # and token 0 is an end-of-sequence token of its generation config
    ends = root / "ends"
    model = make_tiny_llama(tokenizer, tie_word_embeddings=False, eos_token_id=0)
    with torch.no_grad():
        model.model.norm.weight.zero_()
    model.save_pretrained(ends)
    tokenizer.save_pretrained(ends)
    adapters["lp-ends"] = register(reg, tokenizer, ends, "lp-ends", METHODS["lp-lora"], 9, root / "staging")
    with TestClient(create_app(reg)) as http:
        yield http, base, adapters
    shutil.rmtree(root / "staging", ignore_errors=True)


@pytest.fixture(scope="module")
def http(setup):
    return setup[0]


def oracle(base: Path, adapter: Path | None):
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    return PeftModel.from_pretrained(model, adapter).eval() if adapter is not None else model


def oracle_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log_softmax at each position of one forward pass; a soft prompt's virtual positions come first: dropped."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -len(ids):].float()
    return torch.log_softmax(logits, dim=-1)


def complete(http, model: str, prompt, **extra) -> dict:
    answer = http.post("/v1/completions", json={"model": model, "prompt": prompt, **extra})
    assert answer.status_code == 200, answer.text
    return answer.json()


def assert_matches(logprobs: dict, tokenizer, ids: list[int], expected: torch.Tensor, top: int) -> None:
    """The prompt part of a choice's logprobs against the oracle's log_softmax rows (expected[i] predicts ids[i+1])."""
    n = len(ids)
    assert logprobs["tokens"][:n] == [tokenizer.decode([t]) for t in ids]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    want = [float(expected[i - 1, t]) for i, t in enumerate(ids) if i]
    assert logprobs["token_logprobs"][1:n] == pytest.approx(want, abs=1e-4)
    for i in range(1, n):
        values, best = torch.topk(expected[i - 1], top)
        top_dict = {tokenizer.decode([t]): v for t, v in zip(best.tolist(), values.tolist(), strict=True)}
        assert logprobs["top_logprobs"][i].keys() == top_dict.keys()
        assert list(logprobs["top_logprobs"][i].values()) == pytest.approx(list(top_dict.values()), abs=1e-4)
    offsets = logprobs["text_offset"][:n]
    assert offsets == [sum(len(t) for t in logprobs["tokens"][:i]) for i in range(n)]


@pytest.mark.parametrize("name", list(METHODS))
def test_echo_scores_the_prompt_as_the_adapter_computes_it(http, setup, tokenizer, name):
    _, base, adapters = setup
    ids = tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    done = complete(http, f"{name}@v1", PROMPTS[0], echo=True, logprobs=TOP, max_tokens=0)
    choice = done["choices"][0]
    assert choice["text"] == PROMPTS[0] and choice["finish_reason"] == "length"
    assert done["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}
    assert len(choice["logprobs"]["tokens"]) == len(ids)  # the virtual tokens are read, not returned
    tuned = oracle_logprobs(oracle(base, adapters[name]), ids)
    assert_matches(choice["logprobs"], tokenizer, ids, tuned, TOP)
    # the adapter is what moved the numbers: off, they are the base's
    plain = complete(http, f"{name}@v1", PROMPTS[0], echo=True, logprobs=TOP, max_tokens=0,
                     adaptflow={"adapter": False})["choices"][0]["logprobs"]
    base_lp = oracle_logprobs(oracle(base, None), ids)
    assert_matches(plain, tokenizer, ids, base_lp, TOP)
    assert not torch.allclose(tuned, base_lp, atol=1e-3)


def greedy(model, ids: list[int], steps: int, eos: int) -> list[int]:
    out = list(ids)
    for _ in range(steps):
        token = int(oracle_logprobs(model, out)[-1].argmax())
        if token == eos:
            break
        out.append(token)
    return out[len(ids):]


@pytest.mark.parametrize("name", ["lp-lora", "lp-prompt"])
def test_generated_tokens_carry_the_logprobs_of_a_forward_pass(http, setup, tokenizer, name):
    """Echo with generation (lm-eval asks max_tokens 1), and logprobs without echo: the generated tokens are the
    oracle's greedy ones, with its logprobs over prompt + completion (the engine's cached decoding agrees)."""
    _, base, adapters = setup
    ids = tokenizer(PROMPTS[1], add_special_tokens=False)["input_ids"]
    model = oracle(base, adapters[name])
    new = greedy(model, ids, 4, tokenizer.eos_token_id)
    expected = oracle_logprobs(model, ids + new)
    want = [float(expected[len(ids) + k - 1, t]) for k, t in enumerate(new)]
    assert new, "the oracle stopped at once: pick another prompt"
    for echo in (True, False):
        choice = complete(http, f"{name}@v1", PROMPTS[1], echo=echo, logprobs=TOP, max_tokens=4)["choices"][0]
        lp, start = choice["logprobs"], len(ids) if echo else 0
        assert lp["tokens"][start:] == [tokenizer.decode([t]) for t in new]
        assert choice["text"] == (PROMPTS[1] if echo else "") + tokenizer.decode(new)
        assert lp["token_logprobs"][start:] == pytest.approx(want, abs=1e-4)
        if echo:
            assert_matches(lp, tokenizer, ids, expected, TOP)


def test_echo_keeps_the_end_of_sequence_token(http, tokenizer):
    """lm-eval scores `token_logprobs[ctxlen:-1]` of echo + max_tokens 1: the generated token must be there even when
    it is the end of sequence (as vLLM returns it), or the prompt's last token would be the one dropped."""
    ids = tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    uniform = -float(torch.log(torch.tensor(float(len(tokenizer)))))
    done = complete(http, "lp-ends@v1", [ids], echo=True, logprobs=1, max_tokens=1)
    choice = done["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["text"] == PROMPTS[0]  # the stop token is not text
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(ids) + 1 and lp["tokens"][-1] == tokenizer.decode([0])
    assert lp["token_logprobs"][1:] == pytest.approx([uniform] * len(ids), abs=1e-4)
    # without echo the tokens still join to the text (the server's behaviour before echo): no stop token
    plain = complete(http, "lp-ends@v1", PROMPTS[0], logprobs=1, max_tokens=1)["choices"][0]
    assert plain["text"] == "" and plain["logprobs"]["tokens"] == []


def test_prompt_lists_and_token_ids(http, tokenizer):
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    texts = complete(http, "lp-lora@v1", PROMPTS, echo=True, logprobs=1, max_tokens=0)
    assert [c["index"] for c in texts["choices"]] == [0, 1]
    assert [c["text"] for c in texts["choices"]] == PROMPTS
    tokens = complete(http, "lp-lora@v1", encoded, echo=True, logprobs=1, max_tokens=0)
    one = complete(http, "lp-lora@v1", encoded[1], echo=True, logprobs=1, max_tokens=0)
    for a, b in zip(texts["choices"], tokens["choices"], strict=True):
        assert a["index"] == b["index"] and a["text"] == b["text"]
        assert a["logprobs"]["token_logprobs"][1:] == pytest.approx(b["logprobs"]["token_logprobs"][1:], abs=1e-6)
    assert one["choices"][0]["logprobs"] == tokens["choices"][1]["logprobs"]  # a list of one, or the ids alone
    # lm-eval's loglikelihood: sum(token_logprobs[ctxlen:-1]) of echo + max_tokens 1, the generated token dropped
    ctxlen = 4
    ll = complete(http, "lp-lora@v1", [encoded[0]], echo=True, logprobs=1, max_tokens=1, temperature=0)
    lp = ll["choices"][0]["logprobs"]["token_logprobs"]
    assert sum(lp[ctxlen:-1]) == pytest.approx(sum(texts["choices"][0]["logprobs"]["token_logprobs"][ctxlen:]), abs=1e-4)
    # echo without logprobs: the prompt's text before the completion, no logprobs
    plain = complete(http, "lp-lora@v1", PROMPTS[0], echo=True, max_tokens=0)["choices"][0]
    assert plain["text"] == PROMPTS[0] and plain["logprobs"] is None


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens: 0 needs echo: true"),
    ({"prompt": "x", "echo": True, "stream": True}, 400, "echo with stream is not supported"),
    ({"prompt": "x", "echo": True, "adaptflow": {"retrieval": True}}, 400, "echo with adaptflow.retrieval"),
    ({"prompt": [1, 10**9], "max_tokens": 1}, 400, "token id 1000000000 is outside this model's vocabulary"),
    ({"prompt": [[]], "max_tokens": 1}, 400, "a list of token ids is empty"),
    ({"prompt": [5, 6], "adaptflow": {"retrieval": True}}, 400, "needs text prompts"),
    ({"prompt": [5] * 1100, "echo": True, "logprobs": 1, "max_tokens": 0}, 400, "context is 1024 tokens"),
])
def test_refusals_name_the_field(http, body, status, message):
    answer = http.post("/v1/completions", json={"model": "lp-lora@v1", **body})
    assert answer.status_code == status and message in answer.json()["error"]["message"], answer.text
