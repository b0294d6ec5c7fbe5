"""adaptflow.system on tiny models: shared base, adapter switching, lanes, concurrency, streaming.

The oracle for every adapter arrangement is the same adapter loaded the plain way, on a fresh
copy of the base (`PeftModel.from_pretrained` / the weights copied in): greedy answers must match.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from adaptflow.system import System, base_loads, shared_base
from components.methods.io import load_adapter, save_adapter
from components.methods.registry import apply_method
from components.models.load import load_model
from components.spec import TaskSpec
from components.training.data import render_prompt
from tests.conftest import make_tiny_llama

QUESTIONS = ["My card was charged twice.", "The app crashes on start.", "Where is my parcel?"]
MAX_NEW = 6


def task_spec(base: Path, adapter: dict | None, name: str = "tiny") -> TaskSpec:
    data: dict = {"name": name, "base_model": {"id": str(base)}, "evaluation": {"max_new_tokens": MAX_NEW}}
    if adapter is None:
        data |= {"goal": "knowledge", "knowledge": {"documents": "docs/"}}
    else:
        data |= {"goal": "behavior", "behavior": {"data": {"train": "train.jsonl"}, "adapter": adapter}}
    return TaskSpec.model_validate(data, context={"check_exists": False})


def make_adapter(tokenizer, spec: TaskSpec, seed: int, out: Path) -> Path:
    """An untrained adapter with random (non-identity) weights, saved like a training run saves it."""
    model = apply_method(make_tiny_llama(tokenizer), spec.behavior.adapter, tokenizer=tokenizer)
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.5)
    return save_adapter(model, spec.behavior.adapter, out)


def base_folder(tokenizer, folder: Path) -> Path:
    """A tiny Llama and its tokenizer saved in `folder`: a base of its own, apart from the shared-base cache."""
    make_tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def dedicated(spec: TaskSpec, adapter_dir: Path | None):
    """A freshly loaded model with the adapter, the plain way: no sharing at all."""
    model = load_model(spec.base_model).eval()
    return load_adapter(model, adapter_dir).eval() if adapter_dir is not None else model


def encode(tokenizer, question: str) -> dict:
    prompt = render_prompt(tokenizer, [{"role": "user", "content": question}])
    return tokenizer([prompt], return_tensors="pt", add_special_tokens=False)


def last_logits(model, enc: dict) -> torch.Tensor:
    with torch.inference_mode():
        return model(**enc).logits[0, -1]


def system_logits(system: System, enc: dict, use_adapter: bool = True) -> torch.Tensor:
    with system.handle.lock:
        model, ctx = system._model_for(use_adapter)
        with ctx:
            return last_logits(model, enc)


def oracle_answer(tokenizer, model, question: str) -> str:
    enc = encode(tokenizer, question)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def base(tmp_path_factory, tokenizer) -> Path:
    """A base folder of this module's own, so the process-wide base cache starts empty for it."""
    return base_folder(tokenizer, tmp_path_factory.mktemp("system-base"))


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tokenizer, base) -> dict[str, tuple[TaskSpec, Path]]:
    root = tmp_path_factory.mktemp("adapters")
    kinds = {
        "lora-a": ({"method": "lora", "r": 2}, 1), "lora-b": ({"method": "lora", "r": 4}, 2),
        "ia3": ({"method": "ia3"}, 3), "prompt": ({"method": "prompt_tuning", "num_virtual_tokens": 3}, 4),
        "selective": ({"method": "selective", "parameters": ["norm"]}, 5),
    }
    out = {}
    for name, (adapter, seed) in kinds.items():
        spec = task_spec(base, adapter, name)
        out[name] = (spec, make_adapter(tokenizer, spec, seed, root / name))
    return out


@pytest.fixture(scope="module")
def systems(base, adapters) -> dict[str, System]:
    loads = base_loads()
    # the prompt-learning system first: it wraps the base before any LoRA layer is injected into it
    order = ["prompt", "lora-a", "lora-b", "ia3", "selective"]
    built = {name: System(f"{name}@v1", adapters[name][0], adapters[name][1], None) for name in order}
    built["plain"] = System("plain@v1", task_spec(base, None), None, None)
    # one copy for the lora lane (shared with prompt/plain), one for the ia3 lane; selective is private
    assert base_loads() - loads == 2
    return built


def test_each_arrangement_computes_what_a_dedicated_model_computes(tokenizer, adapters, systems):
    enc = encode(tokenizer, QUESTIONS[0])
    plain = system_logits(systems["plain"], enc)
    for name, (spec, adapter_dir) in adapters.items():
        expected = last_logits(dedicated(spec, adapter_dir), enc)
        got = system_logits(systems[name], enc)
        assert torch.allclose(got, expected, atol=1e-5), name
        assert not torch.allclose(got, plain, atol=1e-3), f"{name}: the adapter changes nothing, so the test shows nothing"
        assert torch.allclose(system_logits(systems[name], enc, use_adapter=False), plain, atol=1e-5), name


def test_a_method_whose_trait_says_no_shared_lane_is_served_on_its_own_base_copy(tokenizer, base, tmp_path):
    """VeRA's spec class says shares_base_lane = False: no lane, a private copy, the dedicated model's logits."""
    spec = task_spec(base, {"method": "vera", "r": 16}, "vera")
    adapter_dir = make_adapter(tokenizer, spec, 6, tmp_path / "vera")
    system = System("vera@v1", spec, adapter_dir, None)
    assert system.adapter_name is None and system._private_model is not None
    enc = encode(tokenizer, QUESTIONS[1])
    assert torch.allclose(system_logits(system, enc), last_logits(dedicated(spec, adapter_dir), enc), atol=1e-5)


def test_lora_answers_match_a_dedicated_model(tokenizer, adapters, systems):
    answers = {name: systems[name].query(QUESTIONS[0]).answer for name in ("lora-a", "lora-b", "plain")}
    for name in ("lora-a", "lora-b"):
        assert answers[name] == oracle_answer(tokenizer, dedicated(*adapters[name]), QUESTIONS[0]), name
    assert len(set(answers.values())) == 3, answers


def test_lora_systems_share_one_base_and_switch_by_name(systems):
    a, b, prompt, plain = systems["lora-a"], systems["lora-b"], systems["prompt"], systems["plain"]
    assert a.handle is b.handle is prompt.handle is plain.handle
    assert systems["ia3"].handle is not a.handle and systems["ia3"].handle.peft_type == "IA3"
    assert a.handle.adapters == {a.adapter_name, b.adapter_name} and a.adapter_name != b.adapter_name
    first = [a.query(q, use_retrieval=False).answer for q in QUESTIONS]
    [b.query(q, use_retrieval=False) for q in QUESTIONS]
    assert [a.query(q, use_retrieval=False).answer for q in QUESTIONS] == first  # switched back exactly


def test_no_adapter_ablation_is_the_base(systems):
    plain = systems["plain"].query(QUESTIONS[1]).answer
    for name in ("lora-a", "ia3", "prompt", "selective"):
        assert systems[name].query(QUESTIONS[1], use_adapter=False).answer == plain, name


def test_same_adapter_under_two_refs_is_loaded_once(base, adapters, systems):
    spec, adapter_dir = adapters["lora-a"]
    again = System("lora-a@production", spec, adapter_dir, None)
    assert again.adapter_name == systems["lora-a"].adapter_name
    assert len(again.handle.adapters) == 2


def test_concurrent_requests_never_see_another_systems_adapter(systems):
    names = ["lora-a", "lora-b", "prompt", "plain"]
    expected = {(n, q): systems[n].query(q).answer for n in names for q in QUESTIONS}
    got: list[tuple[str, str, str]] = []
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for i in range(6):
                name, question = names[(i + offset) % len(names)], QUESTIONS[(i + offset) % len(QUESTIONS)]
                got.append((name, question, systems[name].query(question).answer))
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    [t.start() for t in threads]
    [t.join(timeout=120) for t in threads]
    assert not errors and len(got) == 24
    assert all(answer == expected[(name, q)] for name, q, answer in got)


def test_stream_yields_the_query_answer_with_usage(systems):
    system = systems["lora-b"]
    answer = system.query(QUESTIONS[2])
    stream = system.stream(QUESTIONS[2])
    text = "".join(stream).strip()
    assert text == answer.answer
    assert stream.usage == answer.usage and stream.finish_reason == answer.finish_reason
    assert answer.usage.completion_tokens <= MAX_NEW and answer.usage.prompt_tokens > 5
    assert answer.finish_reason in {"stop", "length"}


def test_stream_left_early_frees_the_base(systems):
    system = systems["lora-a"]
    stream = system.stream(QUESTIONS[0], max_new_tokens=200)
    pieces = iter(stream)
    next(pieces)
    pieces.close()  # the reader went away: the row leaves the batch instead of running 200 tokens
    deadline = time.monotonic() + 30
    while not stream._row.finished and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream._row.finished and len(stream._row.generated) < 200
    assert system.handle.engine.active() == 0
    assert system.query(QUESTIONS[0]).answer  # the base is free again


def test_query_needs_a_user_message(systems):
    with pytest.raises(ValueError, match="role 'user'"):
        systems["plain"].query(messages=[{"role": "system", "content": "hi"}])


def test_shared_base_is_keyed_by_weights_and_quantization(base, systems):
    spec = task_spec(base, None).base_model
    assert shared_base(spec) is systems["plain"].handle
    assert shared_base(spec, "LORA") is systems["lora-a"].handle
    assert shared_base(spec, "IA3") is systems["ia3"].handle


def test_sampling_parameters_reach_generate(systems):
    system = systems["lora-a"]
    greedy = system.query(QUESTIONS[0]).answer

    def sampled(seed: int) -> str:
        return system.query(QUESTIONS[0], temperature=1.5, top_p=0.95, seed=seed).answer

    assert sampled(0) == sampled(0)  # seeded sampling repeats
    assert any(sampled(seed) != greedy for seed in range(3))  # and it is sampling, not greedy


def test_stream_hands_a_generation_error_to_the_reader(systems):
    system = systems["lora-b"]
    stream = system.stream(QUESTIONS[0])
    stream._row.fail(RuntimeError("boom"))  # what the engine does when this row's forward pass fails alone
    with pytest.raises(RuntimeError, match="boom"):
        "".join(stream)  # raised here, not lost on the engine thread (and the reader does not hang)
    assert system.query(QUESTIONS[0]).answer is not None


def cacheless_greedy(model, ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """Greedy tokens and their log-probabilities by whole forward passes without a KV cache: what any cached
    decoding must reproduce."""
    seq, logprobs = torch.tensor([ids]), []
    with torch.inference_mode():
        for _ in range(n):
            logits = model(input_ids=seq, attention_mask=torch.ones_like(seq), use_cache=False).logits[0, -1].float()
            nxt = logits.argmax()
            logprobs.append(torch.log_softmax(logits, -1)[nxt].item())
            seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
    return seq[0, len(ids):].tolist(), logprobs


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning", "prefix_tuning"])
def test_prompt_learning_rows_batch_on_their_kv_cache_and_answer_as_whole_passes_do(tokenizer, tmp_path, method):
    """Rows of one prompt-learning system of different lengths share passes: the virtual tokens (or prefix) go into
    the cache before each row's padding, every later step feeds one token per row, and each step's log-probability
    is the one a whole cache-free pass over virtual tokens + prompt + answer gives for that row alone."""
    import queue

    from components.serving import engine
    from components.serving.sampling import SamplingParams

    folder = base_folder(tokenizer, tmp_path / "base")  # no LoRA lane injected into it by other tests
    spec = task_spec(folder, {"method": method, "num_virtual_tokens": 3}, method.replace("_", "-"))
    adapter_dir = make_adapter(tokenizer, spec, 11, tmp_path / "adapter")
    system = System(f"{spec.name}@v1", spec, adapter_dir, None)
    questions = [*QUESTIONS, "Please tell me, in some detail, why my refund has still not arrived after a month."]
    prepared = [system.prepare_chat([{"role": "user", "content": q}]) for q in questions]
    assert len({len(p.ids) for p in prepared}) > 1  # rows of different lengths: padding is exercised
    widths: list[int] = []
    rows: list[int] = []
    hook = system.handle.model.get_input_embeddings().register_forward_pre_hook(
        lambda _m, args: widths.append(args[0].shape[-1]))
    stop = engine.observe(lambda n, _: rows.append(n))
    events: queue.SimpleQueue = queue.SimpleQueue()
    try:
        for i, p in enumerate(prepared):
            system.submit(p, SamplingParams(12, logprobs=True), events.put, index=i)
        done: dict = {}
        while len(done) < len(prepared):
            kind, index, *payload = events.get(timeout=120)
            assert kind != "error", payload
            if kind == "done":
                done[index] = payload[0]
    finally:
        hook.remove()
        stop()
    oracle, plain = dedicated(spec, adapter_dir), dedicated(spec, None)
    for i, p in enumerate(prepared):
        tokens, logprobs = cacheless_greedy(oracle, p.ids, 12)
        got = done[i].token_ids
        assert len(got) >= 3 and got == tokens[:len(got)] and (len(got) == 12 or done[i].finish_reason == "stop")
        assert [c.logprob for c in done[i].logprobs] == pytest.approx(logprobs[:len(got)], abs=1e-4), i
        assert logprobs != pytest.approx(cacheless_greedy(plain, p.ids, 12)[1], abs=1e-3)  # the adapter matters
    assert max(rows) == len(prepared), rows  # they shared forward passes
    assert widths[0] == max(len(p.ids) for p in prepared) and set(widths[1:]) == {1}, widths  # one token per step
