"""A shipped built-in model is exactly what its recipe builds: the build path, end to end."""

import json

import pytest

from fedprag.shared.models.tiny import numerics
from fedprag.shared.models.tiny.build import build_tiny
from fedprag.shared.models.tiny.recipe import RECIPES
from fedprag.shared.models.tiny.shipped import METRICS, SHIPPED_ROOT, differing

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not numerics.pinnable(), reason="portable numerics need a CPU with AVX2")]


def test_rebuilding_the_short_recipe_gives_the_shipped_model_bit_for_bit(tmp_path):
    """About 25 s on 2 cores: the recipe trained from nothing under portable numerics, tokenizer
    included, gives every shipped file's bytes and the same answers on the build's own check."""
    built = build_tiny(RECIPES["short"], cache_root=tmp_path, show_progress=False)
    assert differing(built) == []
    figures = json.loads((built / METRICS).read_text())
    shipped = json.loads((SHIPPED_ROOT / built.name / METRICS).read_text())
    assert figures.pop("build_seconds") > 0 and shipped.pop("build_seconds") > 0
    assert figures == shipped
