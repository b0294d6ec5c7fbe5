"""The reading adapter of a knowledge system: which one (`knowledge.reader`), its recipe, and its training.

Generation wastes what retrieval finds when the model does not read numbered context well: the
built-in 135M model answers chatty, invents, or ignores the passage. A reader is a LoRA that
teaches the general skill (answer briefly from the context, or say `ABSTAIN_PHRASE`), not any
corpus's facts, so one reader serves every knowledge spec on its base:

- `builtin`: on the built-in base, the trained weights that ship in `resources/reader-adapter/` (a vanilla
  peft folder; `SHIPPED.json` records the base weights' hash, the data's and the recipe it was trained
  with, and every file's sha256, verified at load: `shipped_reader`), so a first knowledge run trains
  nothing. Where they do not match (another base, an edited data set or recipe) it is trained at first use
  from `resources/reader.jsonl` (written by specs/data/reading/generate.py) with `RECIPE`, cached by
  content hash in the stage store under $ADAPTFLOW_HOME (flows.keys.reader_key: base weights + data +
  recipe + training code). `python -m components.training.reader --ship` retrains and rewrites the shipped folder.
- `NAME@REF`: the adapter of a registered version of the same base (an injected tuner such as LoRA).
- With `knowledge.reader_model`, "the base" above is the reader model: the reader belongs to the model that writes
  the answers (`TaskSpec.reading_model`).
- `auto`: builtin on the built-in base model; the evaluation then keeps it only where it scores
  better than the base model on the spec's own evaluation set (`prefer_reader`).
- `none`: no reader.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

from components.spec import BUILTIN_MODEL, BehaviorSpec, TaskSpec

READER_DATA = "reader.jsonl"
SHIPPED_DIR = "reader-adapter"
SHIPPED_MARKER = "SHIPPED.json"
RECIPE = {
    "data": {"format": "chat", "eval_split": 0.1},
    "adapter": {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.05,
                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    "training": {"epochs": 2, "batch_size": 4, "lr": 1.0e-3, "max_seq_len": 640, "seed": 0},  # whole documents
}
INJECTED = {"LORA", "ADALORA", "IA3", "LOHA", "LOKR"}  # peft types that share the base (adaptflow.system)


def reader_data() -> Path:
    return Path(str(resources.files("components").joinpath("resources", READER_DATA)))


def shipped_dir() -> Path:
    return Path(str(resources.files("components").joinpath("resources", SHIPPED_DIR)))


class ShippedReaderError(RuntimeError):
    pass


def shipped_record(spec: TaskSpec) -> dict | None:
    """SHIPPED.json of the shipped reader when it was trained for this spec's base weights, on today's reader data
    with today's recipe; else None (the reader is trained at first use)."""
    from components.models.load import resolve_model
    from components.store.fileio import sha256_file

    marker = shipped_dir() / SHIPPED_MARKER
    if reader_mode(spec) != "builtin" or not marker.exists():
        return None
    record = json.loads(marker.read_text())
    if record.get("recipe") != RECIPE or record.get("data_sha256") != sha256_file(reader_data()):
        return None
    if record.get("base_weights_hash") != resolve_model(spec.reading_model, verify=False).weights_hash:
        return None
    return record


def copy_shipped(record: dict, out_dir: Path) -> dict:
    """Copy the shipped reader into out_dir/adapter after checking every file against SHIPPED.json; returns its
    training record. A changed or missing file is an error naming it (a reinstall restores the wheel's files)."""
    from components.store.fileio import verify_dir

    source = shipped_dir()
    problems = verify_dir(source, record["files"])
    if problems:
        raise ShippedReaderError(
            "the shipped reader in " + str(source) + " does not match its SHIPPED.json: "
            + ", ".join(f"{name} ({why})" for name, why in sorted(problems.items()))
            + "; reinstall adaptflow (pip install --force-reinstall) or delete SHIPPED.json to train the reader")
    target = out_dir / "adapter"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in record["files"]:
        shutil.copy2(source / name, target / name)
    if verify_dir(target, record["files"]):
        raise ShippedReaderError(f"copying the shipped reader into {target} changed its files; check the disk")
    return {**record["train_record"], "shipped": True}


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
        return "builtin" if spec.reading_model.id == BUILTIN_MODEL else None  # the model that reads: reader_model
    return None if chosen == "none" else chosen


def chosen_reader_decides(spec: TaskSpec) -> bool:
    """True when the evaluation chooses between base and reader (auto), False when the spec fixed it."""
    return spec.knowledge is not None and spec.knowledge.reader == "auto"


def train_reader(spec: TaskSpec, out_dir: Path, progress=None, data: Path | None = None):
    """Train the builtin reader for the model that reads (`knowledge.reader_model`, else `base_model`) into
    out_dir/adapter; returns the TrainRecord."""
    from components.models.load import load_model, load_tokenizer, resolve_model
    from components.training.recipe import prepare_data, train

    behavior = reader_behavior(data)
    model_spec = spec.reading_model
    resolved = resolve_model(model_spec)
    tokenizer = load_tokenizer(model_spec, resolved)
    prepared = prepare_data(behavior, tokenizer)
    model = load_model(model_spec, resolved, precision=behavior.training.precision)
    return train(model, tokenizer, behavior, out_dir, progress=progress, data=prepared)


class ReaderError(ValueError):
    pass


def registered_reader(spec: TaskSpec, ref: str, registry=None):
    """The registry version whose adapter reads for `spec`; checked: same base weights, an injected tuner."""
    import json

    from components.models.load import resolve_model
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
    ours = resolve_model(spec.reading_model, verify=False).weights_hash
    manifest = version.manifest  # a version whose answers came from a reader_model: its adapter belongs to that
    theirs = (manifest.get("reader_model") or manifest.get("base_model") or {}).get("weights_hash")
    if ours != theirs:
        which = "knowledge.reader_model" if spec.reading_model is not spec.base_model else "base_model"
        raise ReaderError(f"knowledge.reader '{ref}' was trained on another model (weights {str(theirs)[:12]}, this "
                          f"spec's {which} '{spec.reading_model.id}' {str(ours)[:12]}); an adapter reads only for its "
                          "own model: register a reader on this model, use `reader: builtin`, or `reader: none`")
    return version


def ship(out: Path | None = None) -> dict:
    """Train the builtin reader on the built-in base and write it, with SHIPPED.json, into `out` (default the
    package's resources/reader-adapter/): what a release runs after changing the reader's data or recipe."""
    import tempfile

    from components.models.load import resolve_model
    from components.spec import TaskSpec
    from components.store.fileio import sha256_file

    out = out or shipped_dir()
    spec = TaskSpec.model_validate({"name": "reader-ship", "goal": "knowledge",
                                    "knowledge": {"documents": ".", "reader": "builtin"}}, context={})
    with tempfile.TemporaryDirectory(prefix="adaptflow-reader-") as tmp:
        record = train_reader(spec, Path(tmp)).to_dict()
        adapter = Path(tmp) / "adapter"
        names = sorted(p.name for p in adapter.iterdir() if p.is_file() and p.name != "train_record.json")
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for name in names:
            shutil.copy2(adapter / name, out / name)
    keep = ("method", "seed", "steps", "epochs", "trainable_params", "total_params", "trainable_pct", "adapter_bytes",
            "final_loss", "loss_curve")
    marker = {"base_model": spec.base_model.id, "base_weights_hash": resolve_model(spec.base_model).weights_hash,
              "data": READER_DATA, "data_sha256": sha256_file(reader_data()), "recipe": RECIPE,
              "files": {name: sha256_file(out / name) for name in names},
              "train_record": {k: record[k] for k in keep if k in record}}
    (out / SHIPPED_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return marker


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="the builtin reader's shipped weights")
    parser.add_argument("--ship", action="store_true", help="retrain on the built-in base and rewrite them")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.ship:
        done = ship(args.out)
        print(f"shipped reader: {len(done['files'])} files, {done['train_record'].get('steps')} steps")
