"""Cache keys for the pipeline's stages: hashes of each stage's resolved inputs."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import platform
from pathlib import Path

from components.evaluation.harness import cache_view, task_digests
from components.models.load import resolve_model
from components.registry import Version
from components.routing.route import Route, route
from components.spec import TaskSpec
from components.store.stages import StageStore, code_version, digest, path_digest
from components.training.reader import reader_mode


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
        dist = spec.behavior.training.distributed
        if dist is not None and dist.config is not None:  # an edited accelerate config (FSDP settings) retrains
            out["behavior.training.distributed.config"] = path_digest(dist.config)
    if spec.knowledge is not None:
        out["knowledge.documents"] = path_digest(spec.knowledge.documents)
        if spec.knowledge.finetune.data is not None:
            out["knowledge.finetune.data"] = path_digest(spec.knowledge.finetune.data)
    if spec.evaluation is not None:
        for field in ("data", "forgetting_text"):
            if (path := getattr(spec.evaluation, field)) is not None:
                out[f"evaluation.{field}"] = path_digest(path)
        out |= task_digests(spec, path_digest)  # evaluation.forgetting.harness: local task YAMLs
    return out


def package_version(package: str) -> str:
    """Hash of every source file of a package, nested ones included, read without importing them. A hand-kept
    module list went stale (the prompt template, hybrid methods, the precision policy and the 4-bit kernel
    choice all change what a stage computes, and none was in it): a stage depends on the whole package."""
    root = Path(importlib.util.find_spec(package).submodule_search_locations[0])
    return digest([(str(p.relative_to(root)), p.read_text(encoding="utf-8")) for p in sorted(root.rglob("*.py"))])[:16]


STAGE_CODE = "components"  # what the train, reader, eval and probe stages run: the whole package
SERVED_CODE = "adaptflow"  # the served system the eval and probe stages generate with (above both halves)


def train_key(spec: TaskSpec) -> str:
    base = resolve_model(spec.base_model, verify=False)
    hashes = {k: v for k, v in data_hashes(spec).items() if k.startswith("behavior.")}
    return digest("train", spec.base_model.model_dump(mode="json"), base.weights_hash, _section(spec.behavior),
                  hashes, package_version(STAGE_CODE))


def reader_key(spec: TaskSpec) -> str:
    """The reading adapter's key: the same for every knowledge spec on one base (trained once, reused)."""
    from components.training.reader import (
        reader_behavior,
        reader_data,
        reader_mode,
        registered_reader,
        shipped_record,
    )

    mode = reader_mode(spec)
    if mode != "builtin":
        version = registered_reader(spec, mode)
        return digest("reader-ref", version.ref, version.manifest.get("files"))
    shipped = shipped_record(spec)
    if shipped is not None:  # the shipped weights: their files' hashes are the stage's whole input
        return digest("reader-shipped", shipped["base_weights_hash"], shipped["files"], shipped["recipe"])
    model = spec.reading_model  # the reader belongs to the model that writes the answers (knowledge.reader_model)
    base = resolve_model(model, verify=False)
    return digest("reader", model.model_dump(mode="json"), base.weights_hash, _section(reader_behavior()),
                  path_digest(reader_data()), package_version(STAGE_CODE))


def _package_modules(package) -> list:
    return [importlib.import_module(f"{package.__name__}.{m.name}") for m in pkgutil.iter_modules(package.__path__)]


def tune_rows(spec: TaskSpec) -> list[tuple[str, list[str], list[str]]] | None:
    """(question, gold doc ids, answers) the index build tunes unset chunking / top_k on (vectorstore.tune), else None."""
    from vectorstore.tune import read_tune_rows, tunable

    if spec.knowledge is None or not tunable(spec.knowledge) or spec.evaluation is None or spec.evaluation.data is None:
        return None
    return read_tune_rows(spec.evaluation.data) or None


def index_key(spec: TaskSpec) -> str:
    import vectorstore

    # the reader is its own stage; inject / finetune say what else is trained, not how the index is built
    section = {k: v for k, v in _section(spec.knowledge).items() if k not in ("reader", "inject", "finetune")}
    tuning = tune_rows(spec)  # unset settings are measured on these questions: they are an input then
    return digest("index", section, vectorstore.corpus_hash(spec.knowledge),
                  code_version(vectorstore, *_package_modules(vectorstore)),
                  *([sorted(spec.knowledge.model_fields_set), tuning] if tuning else []))


def eval_key(spec: TaskSpec, decision: Route, train_key: str | None, index_key: str | None,
             reader_key: str | None = None) -> str:
    """The eval stage's key from its upstream stages' keys (None for a stage the route skips)."""
    ev = spec.evaluation.model_dump(mode="json", exclude={"data", "forgetting_text", "forgetting", "gates", "promote_to"}) if spec.evaluation else None
    if ev is not None and spec.evaluation.forgetting is not None:  # its local paths by name: task_digests has content
        ev["forgetting"] = cache_view(spec.evaluation.forgetting)
    hashes = {k: v for k, v in data_hashes(spec).items() if k.startswith("evaluation.")}
    return digest("eval", decision.label, train_key, index_key, ev, hashes, spec.knowledge.top_k if spec.knowledge else None,
                  package_version(STAGE_CODE), package_version(SERVED_CODE), *([reader_key] if reader_key else []),
                  *_reader_model_part(spec))


def _reader_model_part(spec: TaskSpec) -> list:
    """`knowledge.reader_model` (its settings and weights) when set: it writes the answers the eval and probe
    stages score. Empty when unset, so a spec without it keys as before."""
    if spec.knowledge is None or spec.knowledge.reader_model is None:
        return []
    model = spec.knowledge.reader_model
    return [model.model_dump(mode="json"), resolve_model(model, verify=False).weights_hash]


def wants_probe(spec: TaskSpec) -> bool:
    """`goal: auto` with an evaluation set: the route is measured (components.routing.probe), not read off the spec."""
    declared = spec.knowledge is not None and spec.knowledge.inject != "rag"  # inject says what is built
    return spec.goal == "auto" and spec.evaluation is not None and not declared


def probe_key(spec: TaskSpec) -> str:
    from components.routing.probe import PROBE_ITEMS

    base = resolve_model(spec.base_model, verify=False)
    hashes = {k: v for k, v in data_hashes(spec).items() if k.startswith("evaluation.")}
    return digest("probe", spec.base_model.model_dump(mode="json"), base.weights_hash, hashes,
                  index_key(spec) if spec.knowledge else None, spec.knowledge.top_k if spec.knowledge else None,
                  spec.evaluation.max_new_tokens, PROBE_ITEMS, package_version(STAGE_CODE),
                  package_version(SERVED_CODE), *_reader_model_part(spec))


def cached_route(spec: TaskSpec) -> Route:
    """The route `adapt` takes: the measured one when its probe is in the store, else the declared one."""
    if wants_probe(spec) and (found := store().done("probe", probe_key(spec))):
        import json

        from components.routing.probe import Evidence, decide

        data = json.loads((found / "probe.json").read_text())
        return decide(spec, Evidence(data["items"], data["strict_metric"], data["arms"]))
    return route(spec)


def stage_keys(spec: TaskSpec) -> dict[str, str]:
    """Every stage's key for this spec, as `adapt` computes them, without running anything."""
    from adaptflow.inject import trainee

    decision = cached_route(spec)
    out: dict[str, str] = {"probe": probe_key(spec)} if wants_probe(spec) else {}
    spec = trainee(spec)  # knowledge.inject finetune/both: the documents as training data
    if decision.behavior:
        out["train"] = train_key(spec)
    if decision.knowledge:
        out["index"] = index_key(spec)
    if decision.knowledge and reader_mode(spec):
        out["reader"] = reader_key(spec)
    out["eval"] = eval_key(spec, decision, out.get("train"), out.get("index"), out.get("reader"))
    return out


def up_to_date(spec: TaskSpec, registry) -> Version | None:
    """The registered version `adapt` would return for this spec without running a stage, else None.

    Every stage output must be in the store and a version must hold the same stage keys, the same
    resolved spec (gates and aliases included) and the same library and Python versions: then the
    pipeline would publish identical content, which the registry answers with that version.
    """
    from components.registry import RegistryError, library_versions, spec_hash

    if spec.name not in registry.names():
        return None
    wanted = stage_keys(spec)
    if not all(store().done(stage, key) for stage, key in wanted.items()):
        return None
    same = {"stage_keys": wanted, "spec_hash": spec_hash(spec), "libraries": library_versions(),
            "python": platform.python_version()}
    try:
        versions = registry.versions(spec.name)
    except RegistryError:
        return None
    return next((v for v in reversed(versions) if all(v.manifest.get(k) == same[k] for k in same)), None)
