"""Where an adapter's change lives: per layer and module, the size and the rank of the update.

Read from the adapter folder alone (no base model) for every factorised method: LoRA/DoRA/QLoRA
(ΔW = s·B·A), AdaLoRA (ΔW = s/r·B·(A⊙E), with its final rank allocation), LoHa, LoKr, IA3 (the
scaling vectors) and prompt learning (the virtual-token vectors; prefix tuning per layer and key /
value). Selective and full fine-tuning store trained base tensors, so their ΔW needs the base's
tensors: those are read by name from the base's safetensors files, without building the model.

Effective rank is Roy & Vetterli's exp(entropy of the normalised singular values); `rank90` is how
many singular values hold 90% of ‖ΔW‖². For B·A products the singular values come from the r×r core
of two QR factorisations, so a 4096×4096 module costs an r×r SVD, not a 4096×4096 one.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
METHOD_FILE = "adaptflow_adapter.json"  # components.methods.io.METHOD_FILE (kept import-free of peft)
WEIGHTS_FILE = "adapter_weights.safetensors"  # components.methods.io.WEIGHTS_FILE
HYBRID_MANIFEST = "hybrid.json"  # components.methods.hybrid.MANIFEST
LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.(.+)$")
TOP_SINGULAR = 8
ENERGY = 0.9


class InspectError(ValueError):
    """The folder is not an adapter this module can read (or its base tensors are needed and absent)."""


@dataclass(frozen=True)
class ModuleStat:
    """One adapted module (or one group of virtual-token vectors)."""

    name: str  # full module path, e.g. model.layers.3.self_attn.q_proj
    layer: int | None  # None for modules outside the repeated blocks (lm_head, embeddings, prompts)
    module: str  # the column of the heatmap: self_attn.q_proj, mlp.down_proj, prompt, key, value
    norm: float  # ‖ΔW‖_F, or the norm of the vectors for prompt learning / IA3's ‖l - 1‖
    rank: int | None = None  # the rank stored (LoRA r, AdaLoRA's final allocation)
    effective_rank: float | None = None
    rank90: int | None = None
    singular_values: list[float] = field(default_factory=list)  # the largest TOP_SINGULAR
    spread: dict[str, float] | None = None  # IA3: mean, std, min, max of the scaling vector


@dataclass
class Inspection:
    method: str  # the adaptflow method (lora, adalora, ia3, ...)
    peft_type: str  # LORA, ADALORA, IA3, ... or WEIGHTS for selective/full
    quantity: str  # what `norm` measures, for the heatmap's colour bar
    modules: list[ModuleStat]
    notes: list[str] = field(default_factory=list)
    rank_allocation: dict[str, int] | None = None  # AdaLoRA: module -> final rank

    def to_dict(self) -> dict:
        return asdict(self)


# --- linear algebra -------------------------------------------------------------------------


def rank_stats(singular: torch.Tensor) -> tuple[float | None, int | None, list[float]]:
    """(effective rank, rank holding 90% of the energy, largest singular values) of a spectrum."""
    s = singular.double().clamp_min(0).sort(descending=True).values
    total = float(s.sum())
    if total <= 0:
        return 0.0, 0, []
    p = s / total
    entropy = -float((p[p > 0] * p[p > 0].log()).sum())
    energy = (s**2).cumsum(0) / float((s**2).sum())
    rank90 = int((energy < ENERGY - 1e-12).sum()) + 1
    return math.exp(entropy), rank90, [round(float(v), 6) for v in s[:TOP_SINGULAR]]


def low_rank_singular_values(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Singular values of b @ a (b: out×r, a: r×in) through the r×r core: B = QbRb, Aᵀ = QaRa."""
    _, rb = torch.linalg.qr(b.double())
    _, ra = torch.linalg.qr(a.double().T)
    return torch.linalg.svdvals(rb @ ra.T)


def _stat(name: str, delta: torch.Tensor | None, *, singular: torch.Tensor | None = None, rank: int | None = None,
          norm: float | None = None, spread: dict | None = None) -> ModuleStat:
    layer, module = split_name(name)
    if singular is None and delta is not None and delta.dim() == 2:
        singular = torch.linalg.svdvals(delta.double())
    erank, r90, top = rank_stats(singular) if singular is not None else (None, None, [])
    if norm is None:
        norm = float(singular.double().pow(2).sum().sqrt()) if singular is not None else float(delta.double().norm())
    return ModuleStat(name, layer, module, round(norm, 8), rank, None if erank is None else round(erank, 4), r90, top,
                      spread)


def split_name(name: str) -> tuple[int | None, str]:
    """'base_model.model.model.layers.3.self_attn.q_proj' -> (3, 'self_attn.q_proj')."""
    if m := LAYER_RE.search(name):
        return int(m.group(1)), m.group(2)
    return None, name.removeprefix("base_model.model.")


# --- reading an adapter folder ---------------------------------------------------------------


def _grouped(tensors: dict[str, torch.Tensor], suffixes: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """{module path: {suffix: tensor}} for keys ending in `.<suffix>` or `.<suffix>.weight`."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        stem = key.removesuffix(".weight")
        module, _, suffix = stem.rpartition(".")
        if suffix in suffixes:
            out.setdefault(module.removeprefix("base_model.model."), {})[suffix] = value.float()
    return dict(sorted(out.items(), key=lambda kv: (split_name(kv[0])[0] or -1, kv[0])))


def _pattern_value(patterns: dict | None, module: str, default):
    """peft's rank_pattern / alpha_pattern lookup: a key matches a module path's suffix."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _lora(tensors, config) -> list[ModuleStat]:
    stats = []
    for module, parts in _grouped(tensors, ("lora_A", "lora_B")).items():
        a, b = parts["lora_A"], parts["lora_B"]
        r = a.shape[0]
        alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", r))
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        stats.append(_stat(module, None, singular=scale * low_rank_singular_values(b, a), rank=r))
    return stats


def _adalora(tensors, config) -> list[ModuleStat]:
    """Saved tensors are already cut to the final rank allocation (peft's rank_pattern), but the scale
    stays alpha / init_r, in training and in vanilla peft's reload alike: ΔW = alpha / init_r · B (A ⊙ E)."""
    stats = []
    for module, parts in _grouped(tensors, ("lora_A", "lora_B", "lora_E")).items():
        a, b, e = parts["lora_A"], parts["lora_B"], parts["lora_E"]
        r = a.shape[0]
        alpha = config.get("lora_alpha") or r
        if r == 0:
            stats.append(_stat(module, None, singular=torch.zeros(1), rank=0, norm=0.0))
            continue
        scale = alpha / (config.get("init_r", r) + 1e-5)
        stats.append(_stat(module, None, singular=scale * low_rank_singular_values(b, a * e), rank=r))
    return stats


def _loha(tensors, config) -> list[ModuleStat]:
    stats = []
    for module, p in _grouped(tensors, ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")).items():
        r = p["hada_w1_b"].shape[0]
        alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("alpha", r))
        delta = (p["hada_w1_a"] @ p["hada_w1_b"]) * (p["hada_w2_a"] @ p["hada_w2_b"]) * (alpha / r)
        stats.append(_stat(module, delta, rank=r))
    return stats


def _lokr(tensors, config) -> list[ModuleStat]:
    names = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
    stats = []
    for module, p in _grouped(tensors, names).items():
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        w2 = p["lokr_w2"] if "lokr_w2" in p else p["lokr_w2_a"] @ p["lokr_w2_b"]
        r = _pattern_value(config.get("rank_pattern"), module, config.get("r", 8))
        alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("alpha", r))
        # the Kronecker product's singular values are all products σᵢ(w1)·σⱼ(w2): no big SVD needed
        singular = torch.outer(torch.linalg.svdvals(w1.double()), torch.linalg.svdvals(w2.double())).flatten()
        stats.append(_stat(module, None, singular=singular * (alpha / r), rank=None))
    return stats


def _ia3(tensors, config) -> list[ModuleStat]:
    """IA3 multiplies activations by a learned vector l (init 1): its spread is the adaptation."""
    stats = []
    for module, p in _grouped(tensors, ("ia3_l",)).items():
        vec = p["ia3_l"].flatten().double()
        spread = {k: round(float(v), 6) for k, v in
                  (("mean", vec.mean()), ("std", vec.std(unbiased=False)), ("min", vec.min()), ("max", vec.max()))}
        stats.append(_stat(module, None, norm=float((vec - 1).norm()), spread=spread))
    return stats


def _prompt(tensors, config) -> list[ModuleStat]:
    emb = tensors["prompt_embeddings"].float()
    if config.get("peft_type") == "PREFIX_TUNING":
        layers = int(config["num_layers"])
        per = emb.reshape(emb.shape[0], layers, 2, -1)  # tokens × layers × (key, value) × dims
        return [_stat(f"layers.{i}.{kv}", None, norm=float(per[:, i, j].double().norm()))
                for i in range(layers) for j, kv in enumerate(("key", "value"))]
    return [_stat(f"prompt.token{t}", None, norm=float(emb[t].double().norm())) for t in range(emb.shape[0])] + [
        _stat("prompt", emb)]


PEFT_READERS = {
    "LORA": _lora, "ADALORA": _adalora, "LOHA": _loha, "LOKR": _lokr, "IA3": _ia3,
    "PROMPT_TUNING": _prompt, "P_TUNING": _prompt, "PREFIX_TUNING": _prompt,
}
QUANTITY = {
    "IA3": "‖l − 1‖ (distance of the scaling vector from identity)",
    "PROMPT_TUNING": "‖virtual token vectors‖", "P_TUNING": "‖virtual token vectors‖ (encoder output)",
    "PREFIX_TUNING": "‖prefix key/value vectors‖",
}


def _method_of(adapter_dir: Path, default: str) -> str:
    path = adapter_dir / METHOD_FILE
    return json.loads(path.read_text()).get("method", default) if path.exists() else default


def inspect_adapter(adapter_dir: Path, base_dir: Path | None = None) -> Inspection:
    """Read an adapter folder (peft's, or selective/full weights with `base_dir`) into an Inspection."""
    adapter_dir = Path(adapter_dir)
    if (adapter_dir / HYBRID_MANIFEST).exists():
        return _inspect_hybrid(adapter_dir, base_dir)
    if (adapter_dir / ADAPTER_CONFIG).exists():
        config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
        peft_type = str(config.get("peft_type", "")).upper()
        if peft_type not in PEFT_READERS:
            raise InspectError(f"{adapter_dir}: peft_type {peft_type or '?'} is not inspectable; "
                               f"inspect reads {', '.join(sorted(PEFT_READERS))}")
        tensors = load_file(adapter_dir / ADAPTER_WEIGHTS)
        stats = PEFT_READERS[peft_type](tensors, config)
        method = _method_of(adapter_dir, peft_type.lower())
        ins = Inspection(method, peft_type, QUANTITY.get(peft_type, "‖ΔW‖_F"), stats)
        if peft_type == "ADALORA":
            ins.rank_allocation = {s.name: int(s.rank or 0) for s in stats}
            ins.notes.append(f"AdaLoRA kept {sum(ins.rank_allocation.values())} of "
                             f"{config.get('init_r', '?')}×{len(stats)} initial ranks (target_r {config.get('target_r')})")
        if config.get("use_dora"):
            ins.notes.append("DoRA: ΔW shown is the low-rank direction update s·B·A; the magnitude vector "
                             "rescales columns of W + s·B·A and needs the base weights")
        return ins
    if (adapter_dir / WEIGHTS_FILE).exists():
        return _inspect_weights(adapter_dir, base_dir)
    raise InspectError(f"{adapter_dir} holds neither {ADAPTER_CONFIG} (peft) nor {WEIGHTS_FILE} (selective/full); "
                       "point at a registered version's adapter/ folder")


def _inspect_hybrid(adapter_dir: Path, base_dir: Path | None) -> Inspection:
    """Each part (a standard peft folder) inspected alone; its modules named `<part>:<module>`."""
    parts = json.loads((adapter_dir / HYBRID_MANIFEST).read_text())["parts"]
    stats, notes = [], ["hybrid: each part's update is shown separately; on a module several parts target, they add up"]
    for part in parts:
        ins = inspect_adapter(adapter_dir / part["name"], base_dir)
        stats += [replace(s, name=f"{part['name']}:{s.name}", module=f"{part['name']}:{s.module}") for s in ins.modules]
        notes += [f"{part['name']}: {n}" for n in ins.notes]
    return Inspection("hybrid", "+".join(p["peft_type"] for p in parts), "‖ΔW‖_F per part", stats, notes)


def base_tensors(base_dir: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors from a model folder's *.safetensors files, without building the model."""
    found: dict[str, torch.Tensor] = {}
    for path in sorted(Path(base_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in set(names) & set(f.keys()):
                found[key] = f.get_tensor(key)
    return found


def _inspect_weights(adapter_dir: Path, base_dir: Path | None) -> Inspection:
    method = _method_of(adapter_dir, "selective")
    if base_dir is None:
        raise InspectError(f"{adapter_dir} holds trained base tensors ({method}); ΔW needs the base model's "
                           "safetensors folder: pass base_dir (the registry manifest's base_model.path)")
    trained = load_file(adapter_dir / WEIGHTS_FILE)
    base = base_tensors(base_dir, list(trained))
    if missing := sorted(set(trained) - set(base)):
        raise InspectError(f"{base_dir} lacks {len(missing)} trained tensors (e.g. {missing[0]}); "
                           "pass the base model this adapter was trained from")
    stats = [_stat(name.removesuffix(".weight"), trained[name].float() - base[name].float())
             for name in sorted(trained, key=lambda n: (split_name(n)[0] or -1, n))]
    return Inspection(method, "WEIGHTS", "‖ΔW‖_F (trained − base tensor)", stats,
                      notes=["ΔW from the base's safetensors tensors (the model itself was not built)"])


# --- reports ---------------------------------------------------------------------------------


def grid(ins: Inspection) -> tuple[list[int], list[str], list[list[float | None]]]:
    """(layers, modules, values[layer][module]) of the modules inside repeated blocks."""
    layered = [s for s in ins.modules if s.layer is not None]
    layers = sorted({s.layer for s in layered})
    modules = sorted({s.module for s in layered}, key=lambda m: min(s.name for s in layered if s.module == m))
    cells = {(s.layer, s.module): s.norm for s in layered}
    return layers, modules, [[cells.get((layer, m)) for m in modules] for layer in layers]


def column_label(module: str) -> str:
    """A heatmap column's label: the module's last name, after its hybrid part when it has one
    ('part1-loha:self_attn.q_proj' -> 'part1-loha:q_proj'), so two parts on one module stay two labels."""
    part, sep, path = module.rpartition(":")
    return f"{part}{sep}{path.rsplit('.', 1)[-1]}"


def write_heatmap(ins: Inspection, path: Path, title: str) -> Path:
    """Layers × modules coloured by the update's norm; a bar per vector group when nothing is layered."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    layers, modules, values = grid(ins)
    if layers:
        data = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(modules), 1.2 + 0.32 * len(layers)))
        image = ax.imshow(data, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_xticks(range(len(modules)), [column_label(m) for m in modules], rotation=45, ha="right")
        ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
        ax.set_ylabel("layer")
        fig.colorbar(image, ax=ax, label=ins.quantity)
    else:
        rows = [s for s in ins.modules if s.module != "prompt"] or ins.modules
        fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(rows)), 3))
        ax.bar(range(len(rows)), [s.norm for s in rows])
        ax.set_xticks(range(len(rows)), [column_label(s.module) for s in rows], rotation=90)
        ax.set_ylabel(ins.quantity)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version string: same update, same bytes
    plt.close(fig)
    return path


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary(ins: Inspection) -> dict[str, float | int]:
    """A few numbers for the manifest: total norm, where the most of it sits, mean effective rank."""
    norms = [s.norm for s in ins.modules if s.module != "prompt"]
    ranks = [s.effective_rank for s in ins.modules if s.effective_rank is not None and s.module != "prompt"]
    total = math.sqrt(sum(n * n for n in norms))
    out: dict[str, float | int] = {"modules": len(norms), "total_norm": round(total, 6)}
    if ranks:
        out["mean_effective_rank"] = round(sum(ranks) / len(ranks), 4)
    if ins.rank_allocation is not None:
        out["final_rank_total"] = sum(ins.rank_allocation.values())
    return out


def render_markdown(ins: Inspection, ref: str) -> str:
    top = sorted((s for s in ins.modules if s.module != "prompt"), key=lambda s: -s.norm)[:5]
    lines = [f"# Inspection of {ref}", "", f"Method **{ins.method}** (peft type {ins.peft_type}); "
             f"the value is {ins.quantity}.", "",
             "Summary: " + ", ".join(f"{k} {_fmt(v)}" for k, v in summary(ins).items()), "",
             "Largest updates: " + ", ".join(f"`{s.name}` {_fmt(s.norm)}" for s in top), ""]
    lines += [f"- {n}" for n in ins.notes] + ([""] if ins.notes else [])
    lines += ["![heatmap](heatmap.png)", "", "| module | layer | norm | rank | effective rank | rank90 | top singular values"
              " | spread (mean/std/min/max) |", "|---|---|---|---|---|---|---|---|"]
    for s in ins.modules:
        sv = ", ".join(f"{v:.3g}" for v in s.singular_values[:4])
        spread = "/".join(f"{s.spread[k]:.3g}" for k in ("mean", "std", "min", "max")) if s.spread else "-"
        lines.append(f"| {s.name} | {_fmt(s.layer)} | {_fmt(s.norm)} | {_fmt(s.rank)} | {_fmt(s.effective_rank)} | "
                     f"{_fmt(s.rank90)} | {sv or '-'} | {spread} |")
    return "\n".join(lines) + "\n"


def write_inspection(ins: Inspection, out_dir: Path, ref: str) -> Path:
    """inspection.json, inspection.md and heatmap.png in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "inspection.json").write_text(json.dumps({"ref": ref, **ins.to_dict(), "summary": summary(ins)},
                                                        indent=2, sort_keys=True) + "\n")
    (out_dir / "inspection.md").write_text(render_markdown(ins, ref))
    write_heatmap(ins, out_dir / "heatmap.png", f"{ref}: {ins.method}")
    return out_dir


# --- the registry ----------------------------------------------------------------------------


def derived_name(name: str) -> str:
    """Where inspections of `name` are registered. Versions are immutable (every file is verified
    against the manifest), so an inspection is its own content-addressed entry, like `<name>--compare`."""
    return f"{name}--inspect"


def base_record(manifest: dict) -> dict:
    """The manifest's base model with its load path: `adapt` keeps the path (machine-specific) under volatile."""
    base = dict(manifest.get("base_model") or {})
    base["path"] = base.get("path") or (manifest.get("volatile") or {}).get("base_model_path") or base.get("id")
    return base


def inspect_registered(registry, ref: str, staging: Path):
    """Inspect the verified version `ref`, write the report into `staging`, publish it as the next
    version of `<name>--inspect` (the same inspection twice is the same version). Returns
    (source version, published version, inspection)."""
    from components.registry import manifest_base

    source = registry.open(ref)
    adapter_dir = source.path / "adapter"
    if not adapter_dir.is_dir():
        raise InspectError(f"{source.ref} has no adapter/ (a knowledge-only system); inspect systems with a behavior half")
    base = base_record(source.manifest)
    ins = inspect_adapter(adapter_dir, Path(base["path"]) if base["path"] != base["id"] else None)
    write_inspection(ins, staging, source.ref)
    manifest = manifest_base(source.manifest["spec"], base_model=base,
                             route="inspect", reasons=[f"inspection of {source.ref}"], metrics=summary(ins))
    manifest["inspects"] = {"ref": source.ref, "content_digest": source.manifest.get("content_digest"),
                            "method": ins.method}
    published = registry.publish(derived_name(source.name), staging, manifest, aliases=["latest"])
    return source, published, ins
