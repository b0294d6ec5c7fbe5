"""What a refactor must not move: `adaptflow schema` and the digest a registered version gets.

Both are pinned here, so that a move of modules (components/ by concern, issue 27) or any other change that should
leave behaviour alone shows it did: the schema is compared byte for byte with docs/spec-schema.json (regenerate it
with `adaptflow schema > docs/spec-schema.json` when the spec changes on purpose), and the triage example's manifest,
built by the real lineage code and published to a real registry, keeps the content digest it had before the move.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
# The triage example registered with the files and lineage below, measured before components/ moved into folders.
TRIAGE_DIGEST = "a689094f5c2a1fde72db287bcb86d3bd2603961eefe443a485ee60079f865916"


def test_adaptflow_schema_is_the_committed_one():
    from flows.cli import app

    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    committed = (REPO / "docs" / "spec-schema.json").read_text()
    assert result.output == committed, "the spec schema changed: if on purpose, run " \
                                       "`adaptflow schema > docs/spec-schema.json` and say so in the commit"


def test_the_triage_example_registers_with_the_digest_it_had(tmp_path):
    from components.registry import Registry
    from components.registry.lineage import manifest_base
    from components.routing.route import route
    from components.spec.load import load_spec

    spec = load_spec(REPO / "specs" / "support-triage.yaml")
    decision = route(spec)
    # the spec as registered, with this checkout's absolute data paths made relative to it (a clone lives elsewhere)
    data = json.loads(json.dumps(spec.model_dump(mode="json")).replace(f"{REPO}/", ""))
    manifest = manifest_base(data, base_model={"id": spec.base_model.id, "revision": None, "weights_hash": "ab12",
                                               "path": "/models/base"},
                             route=decision.label, reasons=decision.reasons,
                             data_hashes={"train": "0" * 64}, metrics={"accuracy": 0.9}, cwd=tmp_path)
    manifest |= {"libraries": {"torch": "2.13.0"}, "python": "3.11.7"}  # this machine's versions left out
    stage = tmp_path / "stage"
    for rel, content in {"adapter/adapter_model.safetensors": b"\x00weights\x01",
                         "adapter/adapter_config.json": json.dumps({"peft_type": "LORA", "r": 8}),
                         "eval/report.json": '{"accuracy": 0.9}'}.items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_bytes(content if isinstance(content, bytes) else content.encode())
    version = Registry(tmp_path / "registry").publish("support-triage", stage, manifest)
    assert version.manifest["content_digest"] == TRIAGE_DIGEST
