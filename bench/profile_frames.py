"""Summarize a py-spy `--format raw` profile (collapsed stacks: `frame;frame;... count` per line).

    .venv/bin/python -m bench.profile_frames PROFILE.txt [--top 12]

Two views: the frames that own the most samples (the leaf of each stack; with `--native`, the C++/BLAS
kernel under torch), and the share of samples under each step of a request (a stack counts once for the
first step it passes, from the model outwards), which is what docs/serving.md's Profile section tables.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

# (step, substrings of a frame "function (file:line)"); the first step found in a stack, leaf first, takes it
STEPS = [
    ("OpenMP barrier / spin (libgomp)", ("libgomp",)),
    ("matmul kernels (mm/addmm, BLAS)", ("sgemm", "gemm", "aten::mm", "addmm", "mkl_", "dnnl", "brgemm", "linear (")),
    ("attention (SDPA)", ("scaled_dot_product", "sdpa_attention", "flash_attention")),
    ("KV cache concat / copy", ("aten::cat", "at::native::cat", "update (transformers/cache_utils", "_pad_left",
                                "merge (components/serving/kvcache", "select (components/serving/kvcache",
                                "grow (components/serving/kvcache", "prefix_past")),
    ("other model ops (norm, rotary, mask, python modules)", ("modeling_llama", "masking_utils", "peft/tuners",
                                                              "torch/nn/modules")),
    ("sampling + detokenize (per row)", ("choose (components/serving/sampling", "push (components/serving/sampling",
                                         "sample (components/serving/engine", "_take (", "greedy_tokens")),
    ("engine loop (scheduling, tensors)", ("components/serving/engine",)),
    ("prompt: chat template + tokenize", ("render_prompt", "apply_chat_template", "_encode (", "prepare_chat")),
    ("retrieval (embed + FAISS + BM25)", ("vectorstore/", "components/serving/embedding", "sentence_transformers")),
    ("abstention / support", ("components/abstention", "settle (")),
    ("HTTP, JSON, asyncio", ("uvicorn", "starlette", "fastapi", "asyncio", "json/", "h11", "api_generate", "flows/api")),
]


# a thread parked in one of these is idle (py-spy's own idle check does not work with --native): not counted
IDLE = ("Condition.wait (", "Event.wait (", "Queue.get (", "epoll_wait", "select (", "_wait_for_tstate_lock",
        "SimpleQueue.get (", "poll (")


def read(path: Path) -> list[tuple[list[str], int]]:
    """The busy stacks of a profile and their sample counts."""
    stacks = []
    for line in path.read_text().splitlines():
        head, _, count = line.rpartition(" ")
        if head and count.isdigit() and not any(m in head for m in IDLE):
            stacks.append((head.split(";"), int(count)))
    return stacks


def short(frame: str) -> str:
    """`fn (path/to/file.py:12)` -> `fn (file.py)`: one entry per function, not per line."""
    match = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    name, where = match.groups()
    return f"{name} ({Path(where).name})"


def summarize(path: Path, top: int = 12) -> dict:
    stacks = read(path)
    total = sum(c for _, c in stacks) or 1
    leaves: Counter = Counter()
    steps: Counter = Counter()
    for frames, count in stacks:
        leaves[short(frames[-1])] += count
        steps[_step(frames)] += count
    return {"samples": total,
            "top_frames": [(f, round(100 * c / total, 1)) for f, c in leaves.most_common(top)],
            "steps": [(s, round(100 * c / total, 1)) for s, c in steps.most_common()]}


def _step(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, marks in STEPS:
            if any(m in frame for m in marks):
                return name
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile", type=Path, nargs="+")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    print(json.dumps({str(p): summarize(p, args.top) for p in args.profile}, indent=2))


if __name__ == "__main__":
    main()
