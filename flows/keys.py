"""Cache keys for the pipeline's stages: hashes of each stage's resolved inputs."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from components import evaluate, metrics, prompting, system
from components.models import resolve_model
from components.route import Route
from components.spec import TaskSpec
from components.stages import StageStore, code_version, digest, path_digest


def store() -> StageStore:
    """The stage store, read from the environment at call time ($ADAPTFLOW_STAGES or $ADAPTFLOW_HOME/stages)."""
    return StageStore()


def _section(model) -> dict:
    """A spec section without its file paths (their content hashes stand in for them)."""
    data = model.model_dump(mode="json")
    for key, value in list(data.items()):
        if isinstance(value, dict):
            data[key] = {k: v for k, v in value.items() if not (isinstance(v, str) and Path(v).is_absolute())}
        elif isinstance(value, str) and Path(value).is_absolute():
            data.pop(key)
    return data


def data_hashes(spec: TaskSpec) -> dict[str, str]:
    out: dict[str, str] = {}
    if spec.behavior is not None:
        out["behavior.train"] = path_digest(spec.behavior.data.train)
        if spec.behavior.data.eval is not None:
            out["behavior.eval"] = path_digest(spec.behavior.data.eval)
    if spec.knowledge is not None:
        out["knowledge.documents"] = path_digest(spec.knowledge.documents)
    if spec.evaluation is not None:
        for field in ("data", "forgetting_text"):
            if (path := getattr(spec.evaluation, field)) is not None:
                out[f"evaluation.{field}"] = path_digest(path)
    return out


def train_key(spec: TaskSpec) -> str:
    from components import batching, checkpoint, data, methods, train

    base = resolve_model(spec.base_model, verify=False)
    hashes = {k: v for k, v in data_hashes(spec).items() if k.startswith("behavior.")}
    return digest("train", spec.base_model.model_dump(mode="json"), base.weights_hash, _section(spec.behavior),
                  hashes, code_version(batching, checkpoint, data, methods, train))


def _package_modules(package) -> list:
    return [importlib.import_module(f"{package.__name__}.{m.name}") for m in pkgutil.iter_modules(package.__path__)]


def index_key(spec: TaskSpec) -> str:
    import vectorstore

    return digest("index", _section(spec.knowledge), vectorstore.corpus_hash(spec.knowledge),
                  code_version(vectorstore, *_package_modules(vectorstore)))


def eval_key(spec: TaskSpec, decision: Route, trained, indexed) -> str:
    ev = spec.evaluation.model_dump(mode="json", exclude={"data", "forgetting_text", "gates", "promote_to"}) if spec.evaluation else None
    hashes = {k: v for k, v in data_hashes(spec).items() if k.startswith("evaluation.")}
    return digest("eval", decision.label, trained.key if trained else None, indexed.key if indexed else None, ev,
                  hashes, spec.knowledge.top_k if spec.knowledge else None,
                  code_version(evaluate, metrics, prompting, system))
