"""A shipped built-in model is exactly what its recipe builds: the build path, end to end."""

import json
from contextlib import nullcontext

import pytest

from fedprag.shared.models.tiny import numerics
from fedprag.shared.models.tiny.build import build_tiny
from fedprag.shared.models.tiny.recipe import RECIPES
from fedprag.shared.models.tiny.shipped import METRICS, SHIPPED_ROOT, differing
from tests import phases

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not numerics.pinnable(), reason="portable numerics need a CPU with AVX2")]


if numerics.pinnable():  # else the test is skipped, and nothing is built
    phases.register("rebuilt_short", lambda work: nullcontext(build_tiny(RECIPES["short"], cache_root=work,
                                                                          show_progress=False)), early=True)


@pytest.fixture
def rebuilt_short(shared_resources):
    """The short recipe built from nothing, in the background while the session's federations'
    tests run (about 25 s of both cores: tests/phases.py)."""
    return phases.shared("rebuilt_short").value(shared_resources)


def test_rebuilding_the_short_recipe_gives_the_shipped_model_bit_for_bit(rebuilt_short):
    """The recipe trained from nothing under portable numerics, tokenizer included, gives every
    shipped file's bytes and the same answers on the build's own check."""
    assert differing(rebuilt_short) == []
    figures = json.loads((rebuilt_short / METRICS).read_text())
    shipped = json.loads((SHIPPED_ROOT / rebuilt_short.name / METRICS).read_text())
    assert figures.pop("build_seconds") > 0 and shipped.pop("build_seconds") > 0
    assert figures == shipped
