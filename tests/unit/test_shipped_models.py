"""The built-in models ship with fedprag and load without training; a damaged copy is refused."""

import shutil

import pytest

from fedprag.shared.models.loading import ModelLoadError, resolve_model_path
from fedprag.shared.models.tiny import shipped as shipped_module
from fedprag.shared.models.tiny.recipe import RECIPES, TinyRecipe, model_name
from fedprag.shared.models.tiny.shipped import SHIPPED_ROOT, ShippedModelError, shipped_model, verified


@pytest.mark.parametrize("recipe", ["default", "small"])
def test_the_default_and_test_models_ship_and_resolve_to_their_shipped_copy(recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDPRAG_HOME", str(tmp_path))  # an empty cache: nothing may be built
    assert shipped_model(RECIPES[recipe]) is not None, f"tiny:{recipe} does not ship with fedprag"
    path = resolve_model_path("tiny" if recipe == "default" else f"tiny:{recipe}")
    assert path == SHIPPED_ROOT / model_name(RECIPES[recipe])
    assert (path / "model.safetensors").is_file() and (path / "metrics.json").is_file()
    assert not (tmp_path / "models").exists()


def test_a_recipe_that_is_not_shipped_has_no_shipped_copy():
    assert shipped_model(TinyRecipe(name="unshipped", steps=7)) is None


def test_a_damaged_or_incomplete_shipped_model_is_refused(tmp_path, monkeypatch):
    name = model_name(RECIPES["small"])
    copy = tmp_path / name
    shutil.copytree(SHIPPED_ROOT / name, copy)
    assert verified(copy) == copy
    weights = bytearray((copy / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(ShippedModelError, match="model.safetensors does not match its sha256"):
        verified(copy)
    monkeypatch.setattr(shipped_module, "SHIPPED_ROOT", tmp_path)
    with pytest.raises(ModelLoadError, match="model.path: shipped model .* does not match"):
        resolve_model_path("tiny:small")
    weights[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(weights))
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ShippedModelError, match="tokenizer.json is missing"):
        verified(copy)
