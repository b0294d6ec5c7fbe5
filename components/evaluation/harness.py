"""Forgetting on lm-evaluation-harness tasks (`evaluation.forgetting.harness`), base against adapted.

lm-eval (the optional `harness` extra) runs in process through its Python API (`simple_evaluate` with a
`TaskManager`) over `SystemLM`, an lm-eval `LM` over the served system itself: `loglikelihood` and
`loglikelihood_rolling` are `System.prompt_logprobs` (one forward pass, adapter applied or not, as `/v1/completions`
with `echo` and `logprobs` answers), `generate_until` is `System.complete` (the serving engine, greedy). So the base
and the adapted system are scored exactly as they are served, and a task scores the same here as through
`adaptflow serve` with `--model local-completions`.

Tasks are lm-eval's registered names (arc_easy, hellaswag: their data sets need a network) or local task YAML files
and folders of them (offline: docs/harness.md). The report holds, per task and metric, the base and adapted scores,
each with the harness's stderr, and the drop (positive: the adapter made it worse, whichever way the metric points).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from components.spec import ForgettingSpec, TaskSpec
from components.spec.evaluation import HARNESS_INSTALL, is_task_path

BOOTSTRAP_ITERS = 1000  # for metrics without a closed-form stderr (lm-eval's default of 100000 takes minutes on bleu)
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's own default for generate_until


class HarnessError(ValueError):
    """A harness task that cannot run (unknown name, unreadable YAML, missing data), with the fix."""


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.api.model import TemplateLM
    except ImportError as exc:
        raise HarnessError(f"evaluation.forgetting.harness needs lm-eval (lm-evaluation-harness): run "
                           f"`{HARNESS_INSTALL}` ({exc})") from exc
    return lm_eval, TemplateLM


def system_lm(system, use_adapter: bool):
    """An lm-eval `LM` over `system` (adaptflow.system.System), its adapter applied or not."""
    _, template_lm = _lm_eval()

    class SystemLM(template_lm):
        """lm-eval's `LM` over one served system: every score from `System.prompt_logprobs` / `System.complete`."""

        def __init__(self) -> None:
            super().__init__()
            self.system, self.use_adapter = system, use_adapter
            self.tokenizer = system.handle.tokenizer

        @property
        def eot_token_id(self) -> int:
            return self.tokenizer.eos_token_id

        @property
        def prefix_token_id(self) -> int:
            # what an empty context and a rolling window start from: BOS where the base has one, as lm-eval's `hf`
            bos = self.tokenizer.bos_token_id
            return bos if bos is not None else self.eot_token_id

        @property
        def max_length(self) -> int:
            return self.system.handle.context_tokens

        @property
        def tokenizer_name(self) -> str:
            return self.tokenizer.name_or_path.replace("/", "__")

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
            # as lm-eval's `hf` model: no special tokens unless asked (the base's BOS comes from the prefix token)
            return self.tokenizer(string, add_special_tokens=bool(add_special_tokens))["input_ids"]

        def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
            return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
            out = []
            for _, context, continuation in tqdm(requests, desc="loglikelihood", disable=disable_tqdm):
                if not continuation:
                    out.append((0.0, True))
                    continue
                ids = (context + continuation)[-self.max_length:]  # left-truncated to the context, as `hf` does
                scored = self.system.prompt_logprobs(ids, top=1, use_adapter=self.use_adapter)[-len(continuation):]
                out.append((sum(c.logprob for c in scored), all(c.top[0][0] == c.token for c in scored)))
            return out

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            from lm_eval import utils

            out = []
            for (text,) in tqdm([r.args for r in requests], desc="loglikelihood_rolling", disable=disable_tqdm):
                windows = map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1))
                scores = self._loglikelihood_tokens([(None, *w) for w in windows], disable_tqdm=True)
                out.append(sum(s for s, _ in scores))
            return out

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            out = []
            for context, gen_kwargs in tqdm([r.args for r in requests], desc="generate_until", disable=disable_tqdm):
                params = self._sampling(dict(gen_kwargs))
                ids = self.tok_encode(context)[-max(1, self.max_length - params.max_tokens):]  # room for the reply
                done = self.system.complete(self.system.prepare_ids(ids), params, use_adapter=self.use_adapter)
                out.append(done.text)
            return out

        def _sampling(self, kwargs: dict):
            from components.serving.sampling import SamplingParams  # torch: only once a task generates

            until = kwargs.pop("until", None) or [self.tokenizer.decode([self.eot_token_id])]
            until = [until] if isinstance(until, str) else list(until)
            sample = kwargs.pop("do_sample", False) and float(kwargs.get("temperature", 0.0)) > 0
            return SamplingParams(int(kwargs.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS)),
                                  float(kwargs.get("temperature", 0.0)) if sample else 0.0,
                                  float(kwargs.get("top_p", 1.0)) if sample else 1.0, stop=tuple(until))

    return SystemLM()


def task_manager(entries: list[str]):
    """lm-eval's TaskManager over the local task folders named in `entries` (a YAML file's own folder, so its
    `include:` siblings resolve); lm-eval's registered tasks only when some entry is a name (indexing them takes
    ~20 s), and then also the task names the folders define. Returns (manager, the task list to run)."""
    from lm_eval.tasks import TaskManager

    folders, tasks, names = [], [], []
    for entry in entries:
        path = Path(entry)
        if not is_task_path(entry):
            names.append(entry)
        elif path.is_dir():
            folders.append(path)
            tasks += TaskManager(include_path=str(path), include_defaults=False).all_subtasks
        else:
            folders.append(path.parent)
            tasks.append(str(path))
    local = TaskManager(include_path=[str(f) for f in dict.fromkeys(folders)] or None, include_defaults=False)
    wanted = [n for n in names if n not in local.all_tasks]
    manager = local if not wanted else TaskManager(include_path=[str(f) for f in dict.fromkeys(folders)] or None)
    if unknown := [n for n in wanted if n not in manager.all_tasks]:
        raise HarnessError(f"evaluation.forgetting.harness: unknown lm-eval task {unknown[0]!r}; use a registered "
                           "name (`lm-eval ls tasks`: arc_easy, hellaswag) or a path to a local task YAML")
    return manager, [*tasks, *names]


@contextlib.contextmanager
def _random_state_kept() -> Iterator[None]:
    """Whatever runs after the harness in this process draws from the generators as it would have without it."""
    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def run_tasks(lm, forgetting: ForgettingSpec, manager, tasks: list[str]) -> dict:
    """lm-eval's `simple_evaluate` on `lm`: its results dict (results, higher_is_better, n-samples, ...)."""
    lm_eval, _ = _lm_eval()
    try:
        with _random_state_kept():  # simple_evaluate seeds Python's, numpy's and torch's global generators
            return lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=forgetting.limit,
                                           apply_chat_template=forgetting.apply_chat_template, log_samples=False,
                                           bootstrap_iters=BOOTSTRAP_ITERS)
    except (KeyError, OSError) as exc:
        raise HarnessError(f"evaluation.forgetting.harness {tasks}: lm-eval could not load a task: {exc}. A local "
                           "task's data path is lm-eval's, relative to the folder adaptflow runs in; a registered "
                           "task downloads its data set (with a network: HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 adaptflow run ...)") from exc


def _stderr(value) -> float | None:
    return round(float(value), 6) if isinstance(value, int | float) else None  # lm-eval writes "N/A" without one


def forgetting_rows(base: dict, adapted: dict) -> list[dict]:
    """One row per task and metric: base and adapted scores, each with the harness's stderr, and the drop."""
    rows = []
    for task, scores in adapted["results"].items():
        better = adapted.get("higher_is_better", {}).get(task, {})
        samples = (adapted.get("n-samples") or {}).get(task, {}).get("effective")
        for key, value in scores.items():
            metric, _, flt = key.partition(",")
            if not flt or metric.endswith("_stderr") or not isinstance(value, int | float):  # alias, sample_len
                continue
            before = base["results"][task][key]
            higher = better.get(metric, True)
            drop = (before - value) if higher else (value - before)
            rows.append({"task": task, "metric": key, "samples": samples, "higher_is_better": higher,
                         "base": round(float(before), 6),
                         "base_stderr": _stderr(base["results"][task].get(f"{metric}_stderr,{flt}")),
                         "adapted": round(float(value), 6),
                         "adapted_stderr": _stderr(scores.get(f"{metric}_stderr,{flt}")), "drop": round(drop, 6)})
    return rows


def harness_forgetting(system, forgetting: ForgettingSpec) -> tuple[dict, float]:
    """(the report's `forgetting.harness` record, wall seconds): every task on the base, then on the adapted system."""
    lm_eval, _ = _lm_eval()
    started = time.perf_counter()
    manager, tasks = task_manager(forgetting.harness)
    base = run_tasks(system_lm(system, use_adapter=False), forgetting, manager, tasks)
    adapted = run_tasks(system_lm(system, use_adapter=True), forgetting, manager, tasks)
    record = {"lm_eval": lm_eval.__version__, "tasks": [Path(t).name if is_task_path(t) else t for t in forgetting.harness],
              "limit": forgetting.limit, "apply_chat_template": forgetting.apply_chat_template,
              "rows": forgetting_rows(base, adapted)}
    return record, round(time.perf_counter() - started, 1)


def add_to_report(report: dict, system, spec: TaskSpec) -> None:
    """Where the spec asks for harness tasks and the report has an adapter's forgetting: its harness record beside
    the perplexity one (`report["forgetting"]["harness"]`), its wall time in the timings (never in report.json)."""
    ev = spec.evaluation
    if ev is None or ev.forgetting is None or "forgetting" not in report:
        return
    report["forgetting"]["harness"], seconds = harness_forgetting(system, ev.forgetting)
    report.setdefault("timings", {})["harness_seconds"] = seconds


def _fmt(value: float, stderr: float | None) -> str:
    return f"{value:.4f} ± {stderr:.4f}" if stderr is not None else f"{value:.4f}"


def harness_table(record: dict) -> list[list[str]]:
    """Header and rows: task, metric, base ± stderr, adapted ± stderr, drop."""
    head = ["task", "metric", "n", "base ± stderr", "adapted ± stderr", "drop"]
    return [head] + [[r["task"], r["metric"], str(r["samples"] or "-"), _fmt(r["base"], r["base_stderr"]),
                      _fmt(r["adapted"], r["adapted_stderr"]), f"{r['drop']:+.4f}"] for r in record["rows"]]


def harness_lines(report: dict) -> list[str]:
    """report.md: the harness forgetting table (empty when the spec asked for none)."""
    record = (report.get("forgetting") or {}).get("harness")
    if not record:
        return []
    table = harness_table(record)
    limit = f"at most {record['limit']} documents a task" if record["limit"] else "every document"
    return ["", f"Forgetting on lm-evaluation-harness tasks (lm-eval {record['lm_eval']}, {limit}; drop is base minus "
            "adapted where higher is better, adapted minus base where lower is: positive means the adapter lost "
            "ground; ± the harness's stderr):", "", "| " + " | ".join(table[0]) + " |",
            "|---|" + "---|" * (len(table[0]) - 1)] + ["| " + " | ".join(r) + " |" for r in table[1:]]


def task_digests(spec: TaskSpec, digest_path) -> dict[str, str]:
    """The content hash of each local task YAML (file or folder) the spec's harness forgetting names, keyed for the
    eval stage's cache key (flows.keys), so an edited task re-evaluates; registered names are in the key as text."""
    ev = spec.evaluation
    if ev is None or ev.forgetting is None:
        return {}
    return {f"evaluation.forgetting.harness.{n}": digest_path(Path(t))
            for n, t in enumerate(ev.forgetting.harness) if is_task_path(t)}


def cache_view(forgetting: ForgettingSpec | None) -> dict | None:
    """The harness settings as the eval stage's key sees them: local paths by file name (their content is hashed
    by `task_digests`), so a moved checkout keeps its cache."""
    if forgetting is None:
        return None
    return forgetting.model_dump(mode="json") | {
        "harness": [Path(t).name if is_task_path(t) else t for t in forgetting.harness]}
