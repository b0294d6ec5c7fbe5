"""Continuous batching on one base model copy (the vLLM / LoRAX scheduling loop, on transformers).

One scheduler thread per base copy owns its forward passes. Each loop it
1. admits waiting requests (an idle engine first waits `window_ms` for company) up to `max_batch` rows,
2. prefills the new rows together, left-padded, and merges their KV cache into their group's,
3. runs one decoding step for every group, and samples each row's next token with the row's own
   generator, grammar and stop strings.

Rows whose routes share a key share forward passes: LoRA systems on one base share the key of the base
and pick their adapter per row through peft's `adapter_names=` ("__base__" for no adapter); other
adapter types batch per adapter; rows of one prompt-learning system batch together: their route's
`prefill` puts the virtual tokens (or the prefix) into the KV cache before each row's padding, and their
decoding steps run on the model under the soft prompt with that cache. A failing forward pass is retried
row by row, so one bad request fails alone. Cancelled and timed-out rows leave the batch at the next step.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from components.serving import kvcache
from components.serving.grammar import Matcher
from components.serving.sampling import SamplingParams, TextTracker, TokenChoice, choose, make_generator

log = logging.getLogger(__name__)


@dataclass
class EngineSettings:
    max_batch: int = 16  # rows decoded together
    max_queue: int = 64  # rows waiting for a place in the batch; past it, submit raises QueueFull
    window_ms: float = 5.0  # how long an idle engine waits for more requests before its first step
    prefix_cache_mb: float = 64.0  # KV of recent prompts kept to skip their shared prefixes' prefill; 0: off


SETTINGS = EngineSettings()
_OBSERVERS: list[Callable[[int, int], None]] = []  # on_step(batch rows, tokens generated)
_ENGINES: list[Engine] = []  # engines with a running thread, stopped at interpreter exit


@atexit.register
def _stop_engines() -> None:
    """Stop every scheduler thread before the interpreter finalizes: a daemon thread still inside a torch
    call while C++ statics are destroyed aborts the process ("terminate called without an active exception")."""
    for engine in list(_ENGINES):
        engine.shutdown()


def configure(**changes) -> EngineSettings:
    """Set the engine limits for engines created from now on (`adaptflow serve` flags)."""
    for name, value in changes.items():
        setattr(SETTINGS, name, value)
    return SETTINGS


def observe(fn: Callable[[int, int], None]) -> Callable[[], None]:
    """Call `fn(rows, tokens)` after every forward pass of every engine; returns the function that stops it."""
    _OBSERVERS.append(fn)
    return lambda: _OBSERVERS.remove(fn) if fn in _OBSERVERS else None


class QueueFull(RuntimeError):
    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"{waiting} requests are already waiting for this model; retry in {retry_after} s")
        self.retry_after = retry_after


class RequestTimeout(TimeoutError):
    pass


class Cancelled(RuntimeError):
    pass


@dataclass(frozen=True, eq=False)
class Route:
    """Which forward pass a row takes. `model()` runs under the base's lock before every pass and
    returns (model, context manager); rows with equal `key` share passes."""

    key: tuple
    model: Callable[[], tuple[object, contextlib.AbstractContextManager]]
    adapter: str | None = None  # the row's entry in peft's adapter_names (mixed LoRA batches)
    # prompt learning: prefill(model(), ids, mask) -> (last logits, cache, mask) fills the cache with the virtual
    # tokens (or the prefix) and the rows' tokens; `decoder()` is the model that decodes on that cache
    prefill: Callable[[object, torch.Tensor, torch.Tensor], tuple] | None = None
    decoder: Callable[[], tuple[object, contextlib.AbstractContextManager]] | None = None


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    logprobs: list[TokenChoice] | None
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    queue_s: float
    ttft_s: float
    total_s: float
    stop_choice: TokenChoice | None = None  # with logprobs: the end-of-sequence token that ended it (vLLM returns it)


@dataclass(eq=False)
class Row:
    """One sequence being generated. Events go to `put` from the engine thread:
    ("delta", index, text, [TokenChoice]), ("done", index, Completion), ("error", index, exception)."""

    prompt_ids: list[int]
    params: SamplingParams
    route: Route
    put: Callable[[tuple], None]
    tokenizer: object
    eos: frozenset[int]
    index: int = 0
    deadline: float | None = None  # time.monotonic() after which the row fails with RequestTimeout
    vocab_size: int | None = None
    generated: list[int] = field(default_factory=list)
    choices: list[TokenChoice] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = 0.0
    admitted: float = 0.0
    first_token: float | None = None
    finished: bool = False
    stop_choice: TokenChoice | None = None
    solo: bool = False  # set after a shared forward pass failed: the row runs alone to find the culprit

    def __post_init__(self):
        self.tracker = TextTracker(self.tokenizer, self.params.stop)
        self.generator = make_generator(self.params.seed)
        self.matcher = (Matcher(self.params.grammar, self.tokenizer, self.vocab_size)
                        if self.params.grammar else None)
        self._sent = 0  # choices already sent with a delta

    def cancel(self) -> None:
        self.cancelled.set()

    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.generated

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline

    def sample(self, logits: torch.Tensor) -> bool:
        """Choose and take the next token; True when the row is finished."""
        allowed = self.matcher.allowed(logits.shape[-1]) if self.matcher else None
        choice = choose(logits, self.params, self.generator, allowed)
        if self.first_token is None:
            self.first_token = time.monotonic()
        if choice.token in self.eos:
            if self.params.logprobs:
                self.stop_choice = choice
            return self.finish("stop")
        self.generated.append(choice.token)
        if self.params.logprobs:
            self.choices.append(choice)
        if self.matcher:
            self.matcher.accept(choice.token)
        self._send(self.tracker.push(self.generated))
        if self.tracker.stopped or (self.matcher and self.matcher.done()):
            return self.finish("stop")
        if len(self.generated) >= self.params.max_tokens:
            return self.finish("length")
        return False

    def _send(self, piece: str) -> None:
        if piece:
            choices, self._sent = self.choices[self._sent:], len(self.choices)
            self.put(("delta", self.index, piece, choices))

    def finish(self, reason: str) -> bool:
        self._send(self.tracker.flush())
        now = time.monotonic()
        first = self.first_token or now
        done = Completion(self.tracker.text, list(self.generated), self.choices if self.params.logprobs else None,
                          reason, len(self.prompt_ids), len(self.generated), self.admitted - self.submitted,
                          first - self.submitted, now - self.submitted, self.stop_choice)
        self.finished = True
        self.put(("done", self.index, done))
        return True

    def fail(self, exc: BaseException) -> None:
        self.finished = True
        self.put(("error", self.index, exc))


@dataclass(eq=False)
class Group:
    """Rows that share forward passes, with their left-padded KV cache and attention mask."""

    route: Route
    rows: list[Row] = field(default_factory=list)
    cache: DynamicCache | None = None
    mask: torch.Tensor | None = None

    def add(self, rows: list[Row], cache: DynamicCache, mask: torch.Tensor) -> None:
        if self.cache is None:
            self.rows, self.cache, self.mask = list(rows), cache, mask
        else:
            self.cache, self.mask = kvcache.merge(self.cache, self.mask, cache, mask)
            self.rows += rows

    def keep(self, keep: list[int]) -> None:
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = self.mask = None
        elif self.cache is not None:
            self.cache, self.mask = kvcache.select(self.cache, self.mask, keep)


class Engine:
    def __init__(self, lock: threading.RLock, pad_id: int, settings: EngineSettings | None = None):
        self.lock, self.pad_id = lock, pad_id
        self.settings = settings or EngineSettings(**vars(SETTINGS))
        self._waiting: deque[Row] = deque()
        self._cv = threading.Condition()
        self._groups: dict[tuple, Group] = {}
        self._thread: threading.Thread | None = None
        self._admitted: list[Row] = []  # rows admitted in this loop, not yet in a group
        self._row_seconds = 1.0  # moving average of a row's time in the batch (Retry-After's estimate)
        self.prefixes = kvcache.PrefixStore(int(self.settings.prefix_cache_mb * 2**20))
        self._stopping = False

    # --- the callers' side --------------------------------------------------------------------

    def submit(self, row: Row) -> Row:
        with self._cv:
            if len(self._waiting) >= self.settings.max_queue:
                raise QueueFull(len(self._waiting), self._retry_after())
            if self._stopping:
                raise RuntimeError("the engine is shutting down")
            row.submitted = time.monotonic()
            self._waiting.append(row)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True, name="adaptflow-engine")
                self._thread.start()
                _ENGINES.append(self)
            self._cv.notify()
        return row

    def shutdown(self, timeout: float = 30.0) -> None:
        """Fail what is waiting or in flight, let the thread finish its current step, and join it."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the engine thread did not stop within %.0f s", timeout)
                return
        with self._cv:  # stopped: a later submit starts a fresh thread
            self._thread, self._stopping = None, False
        if self in _ENGINES:
            _ENGINES.remove(self)

    def queue_depth(self) -> int:
        return len(self._waiting)

    def active(self) -> int:
        return sum(len(g.rows) for g in list(self._groups.values()))

    def _retry_after(self) -> int:
        batches = len(self._waiting) / max(1, self.settings.max_batch)
        return max(1, math.ceil(batches * self._row_seconds))

    # --- the scheduler thread -----------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping:
            try:
                self._tick()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any one batch
                log.exception("engine step failed")
                self._fail_all(exc)
        with self._cv:
            waiting, self._waiting = list(self._waiting), deque()
        self._fail_all(RuntimeError("the engine shut down"), waiting)

    def _fail_all(self, exc: Exception, also: list[Row] = ()) -> None:
        """An error outside any one row's forward pass (e.g. a cache that cannot merge): fail what is in flight."""
        rows = list(also) + self._admitted + [row for group in self._groups.values() for row in group.rows]
        self._groups.clear()
        for row in rows:
            if not row.finished:
                row.fail(exc)

    def _tick(self) -> None:
        admitted = self._admitted = self._admit()
        by_key: dict[tuple, list[Row]] = {}
        for row in admitted:
            key = row.route.key if not row.solo else (id(row),)
            by_key.setdefault(key, []).append(row)
        for key, rows in by_key.items():
            self._prefill(key, rows)
        for key, group in list(self._groups.items()):
            self._decode(group)
            if not group.rows:
                del self._groups[key]

    def _admit(self) -> list[Row]:
        with self._cv:
            while not self._waiting and not self._groups and not self._stopping:
                self._cv.wait()
            if self._stopping:
                return []
            if not self._groups and self.settings.window_ms > 0:  # idle: wait a few ms for company
                until = self._waiting[0].submitted + self.settings.window_ms / 1000
                while len(self._waiting) < self.settings.max_batch and (left := until - time.monotonic()) > 0:
                    self._cv.wait(left)
            now = time.monotonic()
            self._waiting = deque(row for row in self._waiting if not self._gone(row, now))
            room = self.settings.max_batch - self.active()
            admitted = []
            while self._waiting and len(admitted) < room:
                row = self._waiting.popleft()
                row.admitted = now
                admitted.append(row)
            return admitted

    def _gone(self, row: Row, now: float) -> bool:
        """Fail a cancelled or timed-out row; True if it was."""
        if row.cancelled.is_set():
            row.fail(Cancelled("the client went away"))
        elif row.expired(now):
            where = "while generating" if row.admitted else "while waiting in the queue"
            row.fail(RequestTimeout(f"the request timed out {where}"))
        else:
            return False
        return True

    def _forward(self, route: Route, rows: list[Row], ids: torch.Tensor, mask: torch.Tensor,
                 positions: torch.Tensor, cache: DynamicCache, decoding: bool = False) -> torch.Tensor:
        """The last position's logits; `cache` is filled in place."""
        extra: dict = {"cache": cache, "use_cache": True}
        if route.adapter is not None:
            extra["adapter_names"] = [r.route.adapter for r in rows]
        with self.lock:
            model, ctx = route.decoder() if decoding and route.decoder is not None else route.model()
            ids, mask = ids.to(model.device), mask.to(model.device)
            with ctx, torch.inference_mode():
                out = model(input_ids=ids, attention_mask=mask, position_ids=positions.to(model.device), **extra)
        for fn in list(_OBSERVERS):
            fn(len(rows), len(rows))
        return out.logits[:, -1].float().cpu()

    def _prefill(self, key: tuple, rows: list[Row]) -> None:
        route = rows[0].route
        try:
            if route.prefill is not None:
                seqs = [r.all_ids() for r in rows]
                ids, mask = _left_padded(seqs, self.pad_id)
                logits, cache, mask = self._soft_prompt_prefill(route, rows, ids, mask)
            else:
                logits, cache, mask = self._cached_prefill(route, rows)
        except Exception as exc:  # noqa: BLE001 - isolate the bad row: retry each alone
            self._isolate(rows, exc)
            return
        keep = [i for i, row in enumerate(rows) if not self._take(row, logits[i])]
        if not keep:
            return
        cache, mask = kvcache.select(cache, mask, keep)
        self._groups.setdefault(key, Group(route)).add([rows[i] for i in keep], cache, mask)

    def _cached_prefill(self, route: Route, rows: list[Row]) -> tuple[torch.Tensor, DynamicCache, torch.Tensor]:
        """Prefill rows, each starting after the longest prefix its route has in the prefix store: a row is
        [its padding][its reused prefix, from the store][its padding][the rest of its prompt], with explicit
        positions; only the last position's logits are computed (the lm_head over a whole prompt is a fifth of
        the 135M model's prefill). The rows' prompts then go into the store."""
        seqs = [r.all_ids() for r in rows]
        reuse = self.prefixes.budget > 0 and not any(r.solo for r in rows)
        keys = [(r.route.key, r.route.adapter) for r in rows]
        extra: dict = {"cache": None, "use_cache": True, "logits_to_keep": 1}
        if route.adapter is not None:
            extra["adapter_names"] = [r.route.adapter for r in rows]
        with self.lock:
            model, ctx = route.model()
            found = [self.prefixes.lookup(k, model, s) if reuse else (None, 0) for k, s in zip(keys, seqs, strict=True)]
            reused = [n for _, n in found]
            ids, mask = _left_padded([s[n:] for s, n in zip(seqs, reused, strict=True)], self.pad_id)
            if any(reused):
                extra["cache"], past = kvcache.with_past([p for p, _ in found], reused)
                mask = torch.cat([past, mask], dim=1)
            else:
                extra["cache"] = DynamicCache()
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
            device = model.device
            with ctx, torch.inference_mode():
                out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                            **extra)
                if reuse:
                    self._remember(model, keys, seqs, extra["cache"], mask)
        for fn in list(_OBSERVERS):
            fn(len(rows), len(rows))
        return out.logits[:, -1].float().cpu(), extra["cache"], mask

    def _remember(self, model, keys: list[tuple], seqs: list[list[int]], cache: DynamicCache,
                  mask: torch.Tensor) -> None:
        if {type(layer) for layer in cache.layers} != {DynamicLayer}:
            return  # sliding windows and the like: nothing to reuse (and nothing merges: kvcache.check_mergeable)
        for r, (key, seq) in enumerate(zip(keys, seqs, strict=True)):
            if not self.prefixes.covered(key, model, seq):
                self.prefixes.add(key, model, seq, kvcache.row_prompt(cache, mask, r))

    def _soft_prompt_prefill(self, route: Route, rows: list[Row], ids: torch.Tensor, mask: torch.Tensor):
        with self.lock:
            model, ctx = route.model()
            with ctx, torch.inference_mode():
                logits, cache, mask = route.prefill(model, ids.to(model.device), mask.to(model.device))
        for fn in list(_OBSERVERS):
            fn(len(rows), len(rows))
        return logits, cache, mask

    def _isolate(self, rows: list[Row], exc: Exception) -> None:
        if len(rows) == 1 and rows[0].solo:
            log.warning("request failed alone: %s", exc)
            rows[0].fail(exc)
            return
        for row in rows:  # solo rows form groups of their own at the front of the queue
            row.solo = True
        with self._cv:
            self._waiting.extendleft(reversed(rows))

    def _take(self, row: Row, logits: torch.Tensor) -> bool:
        """Sample the row's next token; True when the row left (finished or failed)."""
        try:
            finished = row.sample(logits)
        except Exception as exc:  # noqa: BLE001 - e.g. a grammar error: this row fails alone
            row.fail(exc)
            return True
        if finished:
            elapsed = time.monotonic() - row.admitted
            self._row_seconds = 0.8 * self._row_seconds + 0.2 * elapsed
        return finished

    def _decode(self, group: Group) -> None:
        now = time.monotonic()
        group.keep([i for i, row in enumerate(group.rows) if not self._gone(row, now)])
        if not group.rows:
            return
        rows = group.rows
        ids = torch.tensor([[r.generated[-1]] for r in rows])
        group.mask = torch.cat([group.mask, group.mask.new_ones(len(rows), 1)], dim=1)
        positions = group.mask.sum(-1, keepdim=True) - 1  # every unmasked column is a token (virtual ones too)
        try:
            logits = self._forward(group.route, rows, ids, group.mask, positions, group.cache, decoding=True)
        except Exception as exc:  # noqa: BLE001 - the group's cache is now unreliable: re-prefill its rows
            group.rows, group.cache, group.mask = [], None, None
            self._isolate(rows, exc)
            return
        group.keep([i for i, row in enumerate(rows) if not self._take(row, logits[i])])


def _left_padded(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    return ids, mask
