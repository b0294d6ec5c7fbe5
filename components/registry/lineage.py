"""What a manifest records besides the files: library versions, git commit, spec hash, base model, gates.

`manifest_base` builds the caller half of a manifest in one place, so every publisher writes the
same keys (the registry adds version, created_at, content_digest and files).
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from components.registry.files import RegistryError, canonical_json, to_json_data

# Distributions whose versions change what a version contains or how it loads.
LIBRARIES = (
    "adaptflow", "torch", "transformers", "peft", "bitsandbytes", "safetensors", "faiss-cpu", "faiss-gpu",
    "faiss", "sentence-transformers", "prefect",
)
BASE_MODEL_KEYS = ("id", "revision", "weights_hash", "path")
GateStatus = Literal["passed", "failed", "unknown"]


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str]:
    """{distribution: version} for those installed; missing ones are skipped, not errors."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None  # no git binary, or a hung filesystem: lineage is best effort
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(cwd: Path | None = None) -> dict[str, Any]:
    """{"git_commit": sha or None outside git, "git_dirty": tracked files changed since that commit}."""
    where = Path(cwd or Path.cwd())
    commit = _git(["rev-parse", "HEAD"], where)
    if commit is None:
        return {"git_commit": None, "git_dirty": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], where)
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def lineage(cwd: Path | None = None) -> dict[str, Any]:
    """Library versions, Python version and git state of the code producing a version."""
    return {"libraries": library_versions(), "python": platform.python_version(), **git_state(cwd)}


def spec_json(spec: Any) -> dict[str, Any]:
    """A resolved spec as JSON data: a pydantic model (`model_dump(mode="json")`) or a mapping."""
    if hasattr(spec, "model_dump"):
        return to_json_data(spec.model_dump(mode="json"), "spec")
    if isinstance(spec, Mapping):
        return to_json_data(spec, "spec")
    raise RegistryError(f"spec is a {type(spec).__name__}; pass the TaskSpec or its model_dump(mode='json')")


def spec_hash(spec: Any) -> str:
    return hashlib.sha256(canonical_json(spec_json(spec))).hexdigest()


def base_model_record(base_model: Any) -> dict[str, Any]:
    """{id, revision, weights_hash, path} from a mapping or an object with those attributes
    (e.g. `components.models.load.ResolvedModel`); `path` is what from_pretrained loads."""
    if isinstance(base_model, Mapping):
        missing = [k for k in BASE_MODEL_KEYS if k not in base_model]
        record = {k: base_model.get(k) for k in BASE_MODEL_KEYS}
    else:
        missing = [k for k in BASE_MODEL_KEYS if not hasattr(base_model, k)]
        record = {k: getattr(base_model, k, None) for k in BASE_MODEL_KEYS}
    if missing:
        raise RegistryError(
            f"base_model lacks {', '.join(missing)}; pass components.models.load.ResolvedModel "
            f"or a dict with {', '.join(BASE_MODEL_KEYS)} (revision and weights_hash may be None)"
        )
    for key in ("id", "path"):
        if not record[key]:
            raise RegistryError(f"base_model.{key} is empty; the manifest must say which model and where it loads from")
    return to_json_data(record, "base_model")


def _as_dict(value: Any, where: str) -> Any:
    return to_json_data(value.to_dict() if hasattr(value, "to_dict") else value, where)


def manifest_base(
    spec: Any,
    *,
    base_model: Any,
    route: str | None = None,
    reasons: Sequence[str] = (),
    data_hashes: Mapping[str, str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    gates: Any = None,
    eval_error: str | None = None,
    volatile: Mapping[str, Any] | None = None,
    volatile_files: Sequence[str] = (),
    cwd: Path | None = None,
) -> dict[str, Any]:
    """The caller's manifest for `Registry.publish`.

    `gates` is a `components.evaluation.gates.GateResult` (or its dict); leave it None when evaluation did
    not run, and set `eval_error` when it crashed: either way no promotion alias moves.
    Put wall times and latencies in `volatile`, and files holding them in `volatile_files`.
    """
    spec_data = spec_json(spec)
    manifest: dict[str, Any] = {
        "spec": spec_data,
        "spec_hash": hashlib.sha256(canonical_json(spec_data)).hexdigest(),
        "route": {"decision": route, "reasons": list(reasons)},
        "base_model": base_model_record(base_model),
        "data_hashes": dict(data_hashes or {}),
        **lineage(cwd),
        "metrics": dict(metrics or {}),
    }
    if gates is not None:
        manifest["gates"] = _as_dict(gates, "gates")
    if eval_error:
        manifest["eval_error"] = eval_error
    if volatile:
        manifest["volatile"] = dict(volatile)
    if volatile_files:
        manifest["volatile_files"] = sorted(volatile_files)
    return to_json_data(manifest)


def gate_status(manifest: Mapping[str, Any]) -> GateStatus:
    """'passed' / 'failed' from the manifest's `gates` ({"passed": bool, "results": [...]}), 'unknown' if absent
    or empty (no gates declared).

    An `eval_error` in the manifest counts as failed, and so does a malformed `gates` entry: a
    version never looks promotable by accident.
    """
    if manifest.get("eval_error"):
        return "failed"
    gates = manifest.get("gates")
    if gates is None:
        return "unknown"
    if isinstance(gates, Mapping) and gates.get("results") == []:
        return "unknown"  # no gates declared: only `latest` moves (components/evaluation/gates.py)
    if isinstance(gates, Mapping) and gates.get("passed") is True:
        return "passed"
    return "failed"


def gate_summary(manifest: Mapping[str, Any]) -> str:
    """'answer_f1 0.31 >= 0.5: FAIL, forgetting 0.02 <= 0.15: pass' (or the eval error)."""
    if manifest.get("eval_error"):
        return f"evaluation failed: {manifest['eval_error']}"
    gates = manifest.get("gates")
    if not isinstance(gates, Mapping):
        return "no gate results recorded"
    parts = []
    for r in gates.get("results") or []:
        value = "missing" if r.get("value") is None else f"{r['value']:.4g}"
        parts.append(f"{r.get('metric')} {value} {r.get('op')} {r.get('threshold')}: {'pass' if r.get('passed') else 'FAIL'}")
    return ", ".join(parts) or ("no gates declared" if gates.get("passed") else "gates failed")
