"""One spec class, one builder, one registration: the registry refuses duplicates and names the spec does not know."""

from __future__ import annotations

import pytest

from components import methods
from tests.components.test_methods import METHODS


def test_every_spec_method_has_exactly_one_builder():
    assert set(methods.BUILDERS) == methods.spec_methods()
    methods.check_registry()  # what the module runs at import


def test_a_second_registration_is_refused():
    with pytest.raises(ValueError, match="'lora' is registered twice"):
        methods.register("lora", methods.build_lora)
    assert methods.BUILDERS["lora"] is methods.build_lora


def test_a_builder_without_a_spec_class_is_refused():
    with pytest.raises(ValueError, match=r"'vera' has no spec class .* `method: Literal\['vera'\]`"):
        methods.register("vera", methods.build_lora)
    assert "vera" not in methods.BUILDERS


def test_the_method_tests_cover_every_registered_single_method():
    assert set(METHODS) == methods.spec_methods() - {"hybrid"}  # hybrids have their own tests (test_hybrid.py)
