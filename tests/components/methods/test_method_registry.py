# ruff: noqa: F811  (the fixtures imported from test_methods are redefined as test arguments)
"""One spec class, one builder, one registration: the registry refuses duplicates and names the spec does not know,
and a method defined at run time is a method like the built-in ones (schema, compare, the method tests)."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import pytest
import yaml
from peft import LoraConfig

from components import compare
from components.methods import registry as methods
from components.methods.io import METHOD_FILE
from components.spec import WEIGHT_METHODS, AdapterBase, LoraSpec, TaskSpec, adapter_methods
from flows.cmd_spec import spec_json_schema
from tests.components.methods.test_methods import (  # noqa: F401  (`trained` is a fixture)
    METHODS,
    check_meta_device_counts,
    check_trains_and_changes_generation,
    check_vanilla_peft_loading,
    trained,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_every_spec_method_has_exactly_one_builder():
    assert set(methods.BUILDERS) == methods.spec_methods()
    methods.check_registry()  # what the module runs at import


def test_a_second_registration_is_refused():
    with pytest.raises(ValueError, match="'lora' is registered twice"):
        methods.register("lora", methods.build_lora)
    assert methods.BUILDERS["lora"] is methods.build_lora


def test_a_builder_without_a_spec_class_is_refused():
    with pytest.raises(ValueError, match=r"'boft' has no spec class .* `method: Literal\['boft'\]`"):
        methods.register("boft", methods.build_lora)
    assert "boft" not in methods.BUILDERS


def test_the_method_tests_cover_every_registered_single_method():
    assert set(METHODS) == methods.spec_methods() - {"hybrid"}  # hybrids have their own tests (test_hybrid.py)


def test_a_spec_class_without_a_learning_rate_family_or_with_a_taken_tag_is_refused():
    with pytest.raises(TypeError, match="set `lr_family: ClassVar"):
        class NoFamilySpec(AdapterBase):
            method: Literal["no_family"] = "no_family"
    with pytest.raises(TypeError, match="'lora' is defined twice"):
        class SecondLoraSpec(LoraSpec):
            pass
    assert "no_family" not in adapter_methods() and adapter_methods().count("lora") == 1


SPEC = """name: dummy
behavior:
  data: {train: train.jsonl}
  adapter: {method: renamed_lora, r: 4}
compare:
  methods: [renamed_lora, ia3]
  lr: {renamed_lora: 1.0e-3}
"""


@pytest.fixture
def renamed_lora():
    """A method made here, as docs/adding-a-method.md says: one spec class with its traits, one builder, one
    registration line. Removed again afterwards, so no other test sees it."""

    class RenamedLoraSpec(LoraSpec):
        method: Literal["renamed_lora"] = "renamed_lora"  # type: ignore[assignment]
        compare_default = False  # not one of compare's default variants
        hybrid_roles = frozenset()  # not a hybrid part

    def build_renamed_lora(spec: RenamedLoraSpec, ctx: methods.BuildContext) -> LoraConfig:
        return LoraConfig(task_type=methods.CAUSAL_LM, r=spec.r, lora_alpha=spec.resolved_alpha,
                          lora_dropout=spec.dropout, target_modules=spec.target_modules)

    try:
        methods.register("renamed_lora", build_renamed_lora)
        yield RenamedLoraSpec
    finally:
        methods.unregister("renamed_lora")


def test_a_method_defined_in_a_test_is_in_the_schema_and_compare(renamed_lora):
    schema = spec_json_schema()
    assert schema["$defs"]["BehaviorSpec"]["properties"]["adapter"]["discriminator"]["mapping"]["renamed_lora"] == \
        "#/$defs/RenamedLoraSpec"
    assert "renamed_lora" in schema["$defs"]["CompareSpec"]["properties"]["methods"]["items"]["enum"]
    jsonschema.validate(yaml.safe_load(SPEC), schema)
    spec = TaskSpec.model_validate(yaml.safe_load(SPEC), context={"check_exists": False})
    assert isinstance(spec.behavior.adapter, renamed_lora) and spec.behavior.adapter.r == 4
    methods.check_registry()

    assert compare.lr_family("renamed_lora") == "low-rank" and "renamed_lora" in compare.LR_FAMILIES["low-rank"][0]
    assert "renamed_lora" not in compare.DEFAULT_METHODS and "renamed_lora" not in WEIGHT_METHODS
    variants = {v.id: v for v in compare.expand_variants(spec)}
    assert list(variants) == ["renamed-lora", "ia3"]
    assert variants["renamed-lora"].spec.behavior.training.lr == 1.0e-3  # compare.lr by the new method's name
    assert variants["ia3"].spec.behavior.training.lr == compare.LR_FAMILIES["ia3"][1]  # another family's rate


def test_a_method_defined_in_a_test_runs_through_the_method_tests(renamed_lora, trained, base_dir, tokenizer):
    check_trains_and_changes_generation(trained, "renamed_lora")
    check_vanilla_peft_loading(trained, base_dir, tokenizer, "renamed_lora")
    check_meta_device_counts(base_dir, tokenizer, "renamed_lora")
    out, record = trained("renamed_lora")
    assert json.loads((out / "adapter" / METHOD_FILE).read_text())["method"] == record.method == "renamed_lora"


def test_a_removed_method_leaves_the_schema():
    assert "renamed_lora" not in adapter_methods() and "renamed_lora" not in methods.BUILDERS
    assert "RenamedLoraSpec" not in spec_json_schema()["$defs"]
