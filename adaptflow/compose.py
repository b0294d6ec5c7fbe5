"""Composing registered LoRA systems into a new one, through peft's `add_weighted_adapter`, and measuring
what the composition kept and lost on each source's own evaluation set (docs/compose.md).

Steps: open and verify the sources (LoRA family, one base model) -> load them as named adapters on one
base -> `add_weighted_adapter(..., combination_type=how)` -> save the composed adapter as a standard peft
folder -> for each source, its main arm (adapter, or adapter+retrieval with the source's own index) scored
for the source and for the composed adapter on the same items in the same run -> register with lineage.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.methods.inspect import base_record
from components.spec import WEIGHTED_MERGE, ComposeSpec, TaskSpec

COMPOSED = "composed"
LORA_FAMILY = WEIGHTED_MERGE  # lora, qlora: what add_weighted_adapter merges (a spec-class trait)


class ComposeError(ValueError):
    """Sources that cannot be composed: the message names the source, the reason and the fix."""


@dataclass(frozen=True)
class Source:
    ref: str
    digest: str
    spec: TaskSpec
    adapter_dir: Path
    index_dir: Path | None
    base: dict


def open_sources(registry, refs: list[str]) -> list[Source]:
    """Verified sources; each a LoRA-family system, all on the same base model (id and weights hash)."""
    sources = []
    for ref in refs:
        version = registry.open(ref)
        spec = TaskSpec.model_validate(version.manifest["spec"], context={"check_exists": False})
        method = spec.behavior.adapter.method if spec.behavior else None
        adapter_dir, index_dir = version.path / "adapter", version.path / "index"
        if method not in LORA_FAMILY or not (adapter_dir / "adapter_config.json").exists():
            raise ComposeError(f"{version.ref} has adapter method '{method}'; compose merges LoRA adapters "
                               f"({', '.join(LORA_FAMILY)}): pick systems trained with one of those")
        sources.append(Source(version.ref, version.manifest.get("content_digest", ""), spec, adapter_dir,
                              index_dir if index_dir.exists() else None, base_record(version.manifest)))
    first = sources[0]
    for other in sources[1:]:
        if (other.base.get("id"), other.base.get("weights_hash")) != (first.base.get("id"), first.base.get("weights_hash")):
            raise ComposeError(f"{other.ref} was trained on {other.base.get('id')} and {first.ref} on {first.base.get('id')} "
                               "(or their weights differ); compose sources that share one base model")
    return sources


def compose_adapters(sources: list[Source], compose: ComposeSpec, out_dir: Path) -> Path:
    """The composed adapter as a standard peft folder at `out_dir` (loads with vanilla PeftModel)."""
    from peft import PeftModel

    from components.models.load import load_model
    from components.models.precision import task_precision

    base = load_model(sources[0].spec.base_model, device="cpu", precision=task_precision(sources[0].spec))
    names = [f"source{i}" for i in range(len(sources))]
    model = PeftModel.from_pretrained(base, sources[0].adapter_dir, adapter_name=names[0])
    for name, source in zip(names[1:], sources[1:], strict=True):
        model.load_adapter(source.adapter_dir, adapter_name=name)
    density = compose.density if compose.how in ("ties", "dare_ties") else None
    try:
        model.add_weighted_adapter(names, compose.resolved_weights, COMPOSED, combination_type=compose.how,
                                   density=density)
    except ValueError as exc:
        raise ComposeError(f"peft cannot compose {', '.join(s.ref for s in sources)} with how '{compose.how}': {exc}. "
                           "'cat' accepts adapters of different ranks; linear, ties and dare_ties need equal r") from None
    tmp = Path(tempfile.mkdtemp(prefix="adaptflow-compose-"))
    try:
        model.save_pretrained(tmp, selected_adapters=[COMPOSED])  # peft writes a named adapter to tmp/<name>/
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.copytree(tmp / COMPOSED, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    config = json.loads((out_dir / "adapter_config.json").read_text())
    for key, value in config.items():  # byte-stable JSON (content-addressed registry), as adapter_io._sort_set_fields
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            config[key] = sorted(value)
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return out_dir


def composed_spec(name: str, sources: list[Source], compose: ComposeSpec, adapter_dir: Path) -> TaskSpec:
    """The new system's spec: the first source's behavior half with the composed LoRA, and the compose section."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    first = sources[0].spec.model_dump(mode="json")
    behavior = first["behavior"] | {"adapter": {"method": "lora", "r": config["r"], "alpha": config["lora_alpha"],
                                                "dropout": 0.0, "target_modules": sorted(config["target_modules"])}}
    data = {"name": name, "goal": "behavior", "base_model": first["base_model"], "behavior": behavior,
            "evaluation": first.get("evaluation"), "compose": compose.model_dump(mode="json")}
    return TaskSpec.model_validate(data, context={"check_exists": False})


def _main_arm(source: Source) -> str:
    return "adapter+retrieval" if source.index_dir is not None else "adapter"


def evaluate_sources(sources: list[Source], composed_dir: Path, name: str) -> dict:
    """Per source: its main arm's metrics for the source and for the composed adapter, on the source's items."""
    from adaptflow.system import System
    from components.evaluation.arms import label_set, load_eval_items, score_arm

    rows = []
    for source in sources:
        if source.spec.evaluation is None:
            rows.append({"source": source.ref, "skipped": "the source has no evaluation set"})
            continue
        items = load_eval_items(source.spec)
        labels, arm = label_set(items), _main_arm(source)
        scored = {}
        for who, adapter in (("source", source.adapter_dir), ("composed", composed_dir)):
            system = System(f"{name}:{who}", source.spec, adapter, source.index_dir)
            scored[who], _ = score_arm(system, items, arm, labels)
        rows.append({"source": source.ref, "items": len(items), "arm": arm,
                     "metric": _score_metric(scored["source"]), "source_metrics": scored["source"],
                     "composed_metrics": scored["composed"]})
    return {"rows": rows}


def _score_metric(metrics: dict) -> str:
    return next((k for k in ("accuracy", "contains_answer", "answer_f1", "exact_match") if k in metrics), "answer_f1")


def render_report(report: dict, ref: str, compose: ComposeSpec) -> str:
    weights = ", ".join(f"{w:g}" for w in compose.resolved_weights)
    lines = [f"# {ref}: composed with {compose.how} (weights {weights})", "",
             "Each source's evaluation set, its main arm, scored for the source and for the composition in the same run.", "",
             "| source | items | arm | metric | source | composed | change |", "|---|---:|---|---|---:|---:|---:|"]
    kept = []
    for row in report["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['source']} | - | - | - | - | - | {row['skipped']} |")
            continue
        m = row["metric"]
        before, after = row["source_metrics"][m], row["composed_metrics"][m]
        lines.append(f"| {row['source']} | {row['items']} | {row['arm']} | {m} | {before:.3f} | {after:.3f} | {after - before:+.3f} |")
        kept.append(f"{row['source'].split('@')[0]} {m} {before:.2f} -> {after:.2f}")
    return "\n".join(lines + ["", "Summary: " + ("; ".join(kept) or "nothing measured")]) + "\n"


def compose_system(registry, name: str, compose: ComposeSpec, staging: Path):
    """Compose, evaluate beside each source, register `name` with lineage. Returns (version, report)."""
    from components.registry import manifest_base

    sources = open_sources(registry, compose.sources)
    adapter_dir = compose_adapters(sources, compose, staging / "adapter")
    spec = composed_spec(name, sources, compose, adapter_dir)
    report = evaluate_sources(sources, adapter_dir, name)
    (staging / "eval").mkdir(parents=True, exist_ok=True)
    (staging / "eval" / "compose.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    (staging / "eval" / "report.md").write_text(render_report(report, name, compose))
    metrics = {}
    for row in (r for r in report["rows"] if "metric" in r):
        source_name, m = row["source"].split("@")[0], row["metric"]
        metrics[f"{m}@{source_name}"] = row["composed_metrics"][m]
        metrics[f"{m}@{source_name}:source"] = row["source_metrics"][m]
    manifest = manifest_base(spec, base_model=sources[0].base, route="behavior",
                             reasons=[f"composed from {', '.join(s.ref for s in sources)} ({compose.how})"],
                             metrics=metrics)
    manifest["composed_from"] = [{"ref": s.ref, "content_digest": s.digest, "weight": w}
                                 for s, w in zip(sources, compose.resolved_weights, strict=True)]
    return registry.publish(name, staging, manifest, aliases=["latest"]), report
