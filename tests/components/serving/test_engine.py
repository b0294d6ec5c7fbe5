"""components.serving.engine on tiny models: rows of different systems batched together must answer
exactly what each answers alone; OpenAI's sampling fields per row; a bad row fails alone; bounds."""

from __future__ import annotations

import json
import queue
import threading
import time

import pytest

from adaptflow.system import Prepared, PromptTooLong
from components.serving.engine import QueueFull, RequestTimeout
from components.serving.grammar import GrammarError, json_grammar
from components.serving.sampling import SamplingParams
from tests.adaptflow import test_system
from tests.adaptflow.test_system import QUESTIONS

base, adapters, systems = test_system.base, test_system.adapters, test_system.systems  # module fixtures

pytestmark = pytest.mark.usefixtures("one_thread")
BATCHED = ["lora-a", "lora-b", "plain", "ia3", "prompt", "selective"]


def submit_all(jobs: list[tuple]) -> list[tuple[str, object]]:
    """Submit (system, prepared, params) jobs at once; wait for all: [("done"|"error", payload)]."""
    events: queue.SimpleQueue = queue.SimpleQueue()
    for i, (system, prepared, params) in enumerate(jobs):
        system.submit(prepared, params, events.put, index=i)
    out: list = [None] * len(jobs)
    while any(o is None for o in out):
        kind, index, *payload = events.get(timeout=120)
        if kind != "delta":
            out[index] = (kind, payload[0])
    return out


def chat(system, question: str) -> Prepared:
    return system.prepare_chat([{"role": "user", "content": question}])


def test_mixed_systems_in_one_batch_answer_what_each_answers_alone(systems):
    alone = {(n, q): systems[n].query(q).answer for n in BATCHED for q in QUESTIONS}
    jobs = [(systems[n], chat(systems[n], q), SamplingParams(6)) for q in QUESTIONS for n in BATCHED]
    steps: list[int] = []
    from components.serving import engine

    stop = engine.observe(lambda rows, _: steps.append(rows))
    try:
        results = submit_all(jobs)
    finally:
        stop()
    got = {(n, q): r.text.strip() for (n, q), (_, r) in zip([(n, q) for q in QUESTIONS for n in BATCHED], results,
                                                             strict=True)}
    assert got == alone
    assert max(steps) >= 3 * len(QUESTIONS) - 1, steps  # the LoRA rows (a, b, plain) shared forward passes


def test_stop_strings_are_trimmed(systems):
    system = systems["lora-a"]
    full = system.complete(chat(system, QUESTIONS[1]), SamplingParams(12)).text
    stop = full[len(full) // 2: len(full) // 2 + 2]
    assert stop.strip(), full
    done = system.complete(chat(system, QUESTIONS[1]), SamplingParams(12, stop=(stop, "never-said")))
    assert done.text == full[: full.index(stop)] and done.finish_reason == "stop"


def test_seed_repeats_inside_a_batch(systems):
    system, other = systems["lora-a"], systems["lora-b"]
    params = SamplingParams(8, temperature=1.5, seed=7)
    alone = system.complete(chat(system, QUESTIONS[0]), params).text
    jobs = [(system, chat(system, QUESTIONS[0]), params)] * 2 + [(other, chat(other, q), SamplingParams(
        8, temperature=1.0)) for q in QUESTIONS]
    results = submit_all(jobs)
    assert results[0][1].text == results[1][1].text == alone
    others = {system.complete(chat(system, QUESTIONS[0]), SamplingParams(8, temperature=1.5, seed=s)).text
              for s in range(4)}
    assert len(others) > 1  # it samples


def test_logprobs_per_token(systems):
    system = systems["lora-b"]
    done = system.complete(chat(system, QUESTIONS[2]), SamplingParams(5, logprobs=True, top_logprobs=3))
    assert len(done.logprobs) == done.completion_tokens == len(done.token_ids)
    for choice, token in zip(done.logprobs, done.token_ids, strict=True):
        assert choice.token == token and choice.logprob <= 0
        assert len(choice.top) == 3 and choice.top[0][0] == token  # greedy: the chosen token is the top one
        assert [lp for _, lp in choice.top] == sorted((lp for _, lp in choice.top), reverse=True)


def test_json_schema_is_followed(systems):
    system = systems["lora-a"]
    handle = system.handle
    schema = {"type": "object", "properties": {"label": {"enum": ["billing", "bug", "account"]}, "n": {"type": "integer"}},
              "required": ["label", "n"], "additionalProperties": False}
    grammar = json_grammar(schema, handle.tokenizer, handle.vocab_size)
    for seed in range(3):
        done = system.complete(chat(system, QUESTIONS[0]), SamplingParams(40, 1.0, seed=seed, grammar=grammar))
        value = json.loads(done.text)
        assert value["label"] in {"billing", "bug", "account"} and isinstance(value["n"], int), done.text
    with pytest.raises(GrammarError):
        json_grammar({"type": "object", "properties": {"x": {"type": "no-such-type"}}}, handle.tokenizer,
                     handle.vocab_size)


def test_a_bad_row_fails_alone(systems):
    a, b = systems["lora-a"], systems["lora-b"]
    bad = Prepared([10**9], [])  # a token id past the vocabulary: its forward pass raises
    expected = [a.query(q).answer for q in QUESTIONS[:2]]
    results = submit_all([(a, chat(a, QUESTIONS[0]), SamplingParams(6)), (b, bad, SamplingParams(6)),
                          (a, chat(a, QUESTIONS[1]), SamplingParams(6))])
    assert results[1][0] == "error" and "index" in str(results[1][1]).lower()
    assert [results[0][1].text.strip(), results[2][1].text.strip()] == expected


def test_timeout_and_prompt_length_bounds(systems):
    system = systems["lora-a"]
    events: queue.SimpleQueue = queue.SimpleQueue()
    system.submit(chat(system, QUESTIONS[0]), SamplingParams(500), events.put, timeout_s=0.05)
    kinds = []
    while not kinds or kinds[-1][0] == "delta":
        kinds.append(events.get(timeout=60))
    assert kinds[-1][0] == "error" and isinstance(kinds[-1][2], RequestTimeout)
    long = Prepared(list(range(100, 1100)), [])
    with pytest.raises(PromptTooLong, match="context is 1024 tokens; the prompt has 1000 tokens"):
        system.submit(long, SamplingParams(48), events.put)
    with pytest.raises(PromptTooLong, match="context is 500"):
        system.submit(chat(system, "hi " * 480), SamplingParams(48), events.put, max_context=500)


def test_queue_limit_refuses_with_retry_after(systems):
    system = systems["lora-b"]
    engine = system.handle.engine
    before = engine.settings.max_queue
    engine.settings.max_queue = 2
    events: queue.SimpleQueue = queue.SimpleQueue()
    try:
        with system.handle.lock:  # the engine admits the first row, then waits for the lock
            system.submit(chat(system, QUESTIONS[0]), SamplingParams(3), events.put)
            deadline = time.monotonic() + 10
            while engine.queue_depth() and time.monotonic() < deadline:
                time.sleep(0.005)
            for _ in range(2):
                system.submit(chat(system, QUESTIONS[1]), SamplingParams(3), events.put)
            with pytest.raises(QueueFull) as refused:
                system.submit(chat(system, QUESTIONS[2]), SamplingParams(3), events.put)
            assert refused.value.retry_after >= 1
    finally:
        engine.settings.max_queue = before
    done = 0
    while done < 3:
        done += events.get(timeout=60)[0] == "done"


def test_many_threads_submitting_at_once(systems):
    names = ["lora-a", "lora-b", "plain"]
    expected = {(n, q): systems[n].query(q).answer for n in names for q in QUESTIONS}
    got, errors = [], []

    def worker(k: int) -> None:
        try:
            for i in range(4):
                n, q = names[(i + k) % 3], QUESTIONS[(i * k) % 3]
                got.append(((n, q), systems[n].query(q).answer))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    [t.start() for t in threads]
    [t.join(timeout=120) for t in threads]
    assert not errors and len(got) == 24 and all(answer == expected[key] for key, answer in got)


def test_shutdown_fails_rows_in_flight_joins_the_thread_and_a_later_submit_restarts_it(systems):
    """At interpreter exit every engine is shut down (atexit): a daemon thread left inside a torch call while
    the interpreter finalizes aborted the process ("terminate called without an active exception")."""
    from components.serving import engine

    system = systems["lora-a"]
    events: queue.SimpleQueue = queue.SimpleQueue()
    system.submit(chat(system, QUESTIONS[0]), SamplingParams(200), events.put, index=0)
    kind, *_ = events.get(timeout=120)
    assert kind == "delta"  # decoding has started
    running = [e for e in engine._ENGINES if e._thread is not None]
    assert running
    for e in running:
        thread = e._thread
        e.shutdown()
        assert not thread.is_alive()
    while (event := events.get(timeout=60))[0] == "delta":
        pass
    assert event[0] == "error" and "shut down" in str(event[2])
    assert system.query(QUESTIONS[0]).answer  # a later request starts the thread again


FAMILIES = {"lora": {"method": "lora", "r": 2}, "dora": {"method": "dora", "r": 2}, "ia3": {"method": "ia3"},
            "loha": {"method": "loha", "r": 2}, "prompt_tuning": {"method": "prompt_tuning", "num_virtual_tokens": 3},
            "prefix_tuning": {"method": "prefix_tuning", "num_virtual_tokens": 3},
            "selective": {"method": "selective", "parameters": ["norm"]}}
SYSTEM_PROMPT = "Classify the support ticket. Reply with one label: billing, bug, account, shipping or other."


def test_greedy_answers_of_every_family_are_a_dedicated_models_with_prefixes_reused(tokenizer, tmp_path):
    """Per method family: questions under one system prompt, sent together twice (the second time their shared
    prefix comes from the engine's prefix store), answer the tokens whole cache-free passes of a plainly loaded
    model give, which is also what `query` (the same engine) answers."""
    from adaptflow.system import System
    from tests.adaptflow.test_system import base_folder, cacheless_greedy, dedicated, make_adapter, task_spec

    folder = base_folder(tokenizer, tmp_path / "base")
    messages = [[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": q}] for q in QUESTIONS]
    for seed, (name, adapter) in enumerate(FAMILIES.items(), 20):
        spec = task_spec(folder, adapter, name.replace("_", "-"))
        adapter_dir = make_adapter(tokenizer, spec, seed, tmp_path / name)
        system = System(f"{spec.name}@v1", spec, adapter_dir, None)
        prepared = [system.prepare_chat(m) for m in messages]
        oracle = dedicated(spec, adapter_dir)
        expected = [cacheless_greedy(oracle, p.ids, 6)[0] for p in prepared]
        hits = system.handle.engine.prefixes.hits
        for _ in range(2):
            results = submit_all([(system, p, SamplingParams(6)) for p in prepared])
            for (kind, done), want in zip(results, expected, strict=True):
                assert kind == "done" and done.token_ids == want[:len(done.token_ids)], name
                assert len(done.token_ids) == 6 or done.finish_reason == "stop", name
        assert system.query(messages=messages[0]).answer == results[0][1].text.strip(), name
        if name not in ("prompt_tuning", "prefix_tuning"):  # a soft prompt goes before the prompt: nothing shared
            assert system.handle.engine.prefixes.hits > hits, name


def test_submitting_does_not_wait_for_a_forward_pass(systems):
    """The server's event loop submits rows: that must not take the lock the engine holds for every forward pass
    (it did, and every stream on the server stalled for the length of each prefill)."""
    system, held, release = systems["lora-a"], threading.Event(), threading.Event()

    def hold() -> None:
        with system.handle.lock:  # what the engine thread does for a whole forward pass
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        held.wait(10)
        events: queue.SimpleQueue = queue.SimpleQueue()
        start = time.monotonic()
        row = system.submit(chat(system, QUESTIONS[0]), SamplingParams(2), events.put)
        assert time.monotonic() - start < 2.0
    finally:
        release.set()
        holder.join()
    while (event := events.get(timeout=60))[0] == "delta":
        pass
    assert event[0] == "done" and row.finished
