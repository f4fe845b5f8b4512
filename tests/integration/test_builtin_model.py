"""The shipped built-in model is exactly what its recipe builds: the build path, end to end."""

import pytest

from fedprag.shared.models.tiny.build import build_tiny
from fedprag.shared.models.tiny.recipe import RECIPES
from fedprag.shared.models.tiny.shipped import SHIPPED_ROOT

pytestmark = pytest.mark.integration


def test_rebuilding_the_small_recipe_gives_the_shipped_model_bit_for_bit(tmp_path):
    """About 2 minutes on 2 cores: the recipe trained from nothing, tokenizer included."""
    built = build_tiny(RECIPES["small"], cache_root=tmp_path, show_progress=False)
    shipped = SHIPPED_ROOT / built.name
    for name in ("model.safetensors", "tokenizer.json", "config.json", "recipe.json"):
        assert (built / name).read_bytes() == (shipped / name).read_bytes(), name
