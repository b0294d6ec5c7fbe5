"""The reading adapter of a knowledge system: which one (`knowledge.reader`), its recipe, and its training.

Generation wastes what retrieval finds when the model does not read numbered context well: the
built-in 135M model answers chatty, invents, or ignores the passage. A reader is a LoRA that
teaches the general skill (answer briefly from the context, or say `ABSTAIN_PHRASE`), not any
corpus's facts, so one reader serves every knowledge spec on its base:

- `builtin`: trained at first use from `resources/reader.jsonl` (written by
  specs/data/reading/generate.py) with `RECIPE`, cached by content hash in the stage store under
  $ADAPTFLOW_HOME (flows.keys.reader_key: base weights + data + recipe + training code).
- `NAME@REF`: the adapter of a registered version of the same base (an injected tuner such as LoRA).
- `auto`: builtin on the built-in base model; the evaluation then keeps it only where it scores
  better than the base model on the spec's own evaluation set (`prefer_reader`).
- `none`: no reader.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from components.spec import BUILTIN_MODEL, BehaviorSpec, TaskSpec

READER_DATA = "reader.jsonl"
RECIPE = {
    "data": {"format": "chat", "eval_split": 0.1},
    "adapter": {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.05,
                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    "training": {"epochs": 2, "batch_size": 4, "lr": 1.0e-3, "max_seq_len": 640, "seed": 0},  # whole documents
}
INJECTED = {"LORA", "ADALORA", "IA3", "LOHA", "LOKR"}  # peft types that share the base (adaptflow.system)


def reader_data() -> Path:
    return Path(str(resources.files("components").joinpath("resources", READER_DATA)))


def reader_behavior(data: Path | None = None) -> BehaviorSpec:
    """The builtin reader's training section, as a spec's `behavior:` would be written."""
    recipe = {**RECIPE, "data": {**RECIPE["data"], "train": str(data or reader_data())}}
    return BehaviorSpec.model_validate(recipe)


def reader_mode(spec: TaskSpec) -> str | None:
    """What reads the retrieved context: None, 'builtin' or 'NAME@REF' (with `auto` resolved).

    A spec with a behavior section has its own adapter, which does the reading (components/spec/task.py refuses an
    explicit reader there)."""
    if spec.knowledge is None or spec.behavior is not None:
        return None
    chosen = spec.knowledge.reader
    if chosen == "auto":
        return "builtin" if spec.base_model.id == BUILTIN_MODEL else None
    return None if chosen == "none" else chosen


def chosen_reader_decides(spec: TaskSpec) -> bool:
    """True when the evaluation chooses between base and reader (auto), False when the spec fixed it."""
    return spec.knowledge is not None and spec.knowledge.reader == "auto"


def train_reader(spec: TaskSpec, out_dir: Path, progress=None, data: Path | None = None):
    """Train the builtin reader for `spec.base_model` into out_dir/adapter; returns the TrainRecord."""
    from components.models import load_model, load_tokenizer, resolve_model
    from components.train import prepare_data, train

    behavior = reader_behavior(data)
    resolved = resolve_model(spec.base_model)
    tokenizer = load_tokenizer(spec.base_model, resolved)
    prepared = prepare_data(behavior, tokenizer)
    model = load_model(spec.base_model, resolved, precision=behavior.training.precision)
    return train(model, tokenizer, behavior, out_dir, progress=progress, data=prepared)


class ReaderError(ValueError):
    pass


def registered_reader(spec: TaskSpec, ref: str, registry=None):
    """The registry version whose adapter reads for `spec`; checked: same base weights, an injected tuner."""
    import json

    from components.models import resolve_model
    from components.registry import Registry

    version = (registry or Registry()).open(ref)
    config = version.path / "adapter" / "adapter_config.json"
    if not config.exists():
        raise ReaderError(f"knowledge.reader is '{ref}' but {version.ref} has no adapter; "
                          "name a version that trained one, or use `reader: builtin`")
    peft_type = json.loads(config.read_text()).get("peft_type")
    if peft_type not in INJECTED:
        raise ReaderError(f"knowledge.reader '{ref}' is a {peft_type} adapter; a reader must be one of "
                          f"{', '.join(sorted(INJECTED))} (it shares the base model)")
    ours = resolve_model(spec.base_model, verify=False).weights_hash
    theirs = (version.manifest.get("base_model") or {}).get("weights_hash")
    if ours != theirs:
        raise ReaderError(f"knowledge.reader '{ref}' was trained on another base model (weights {str(theirs)[:12]}, "
                          f"this spec's {str(ours)[:12]}); register a reader on this base or use `reader: builtin`")
    return version
