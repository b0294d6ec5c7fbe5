"""Stage keys hash the whole `components` package: editing any module a stage runs re-runs the stage."""

from __future__ import annotations

import importlib.util
import shutil
import sys

from flows.keys import STAGE_CODE, package_version


def test_editing_a_prompt_template_or_a_nested_module_changes_the_stage_code_hash(tmp_path, monkeypatch):
    """A real copy of the package, edited on disk as a developer would: the template that builds every evaluation
    prompt (components/models/prompting.py, missing from the old hand-kept module list) and a nested serving module."""
    source = importlib.util.find_spec(STAGE_CODE).submodule_search_locations[0]
    copy = tmp_path / "pkgs" / "components_copy"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.syspath_prepend(str(copy.parent))
    before = package_version("components_copy")
    assert before == package_version(STAGE_CODE)  # same files, same hash, wherever the package lives

    prompting = copy / "models" / "prompting.py"
    prompting.write_text(prompting.read_text() + "\n# a changed template comment\n")
    after_template = package_version("components_copy")
    assert after_template != before

    nested = copy / "serving" / "sampling.py"
    nested.write_text(nested.read_text() + "\n")
    assert package_version("components_copy") not in (before, after_template)
    sys.modules.pop("components_copy", None)


def test_editing_the_accelerate_config_file_changes_the_training_inputs(tmp_path, tiny_llama_dir):
    """The config's contents, not only its path, are a training input: an edited FSDP setting retrains."""
    import yaml

    from flows.keys import data_hashes
    from tests.components.training.test_fsdp import fsdp_config, task

    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]}\n')
    config = fsdp_config(tmp_path)
    before = data_hashes(task(tiny_llama_dir, data, config))
    assert "behavior.training.distributed.config" in before
    assert data_hashes(task(tiny_llama_dir, data, config)) == before  # same file, same inputs
    edited = yaml.safe_load(config.read_text())
    edited["fsdp_config"]["fsdp_reshard_after_forward"] = False
    config.write_text(yaml.safe_dump(edited))
    after = data_hashes(task(tiny_llama_dir, data, config))
    assert after["behavior.training.distributed.config"] != before["behavior.training.distributed.config"]
    assert "behavior.training.distributed.config" not in data_hashes(task(tiny_llama_dir, data, None))
