"""The built-in models ship with fedprag and load without training; a damaged copy is refused."""

import shutil

import pytest

from fedprag.shared.models.errors import ModelLoadError
from fedprag.shared.models.loading import resolve_model_path
from fedprag.shared.models.tiny import shipped as shipped_module
from fedprag.shared.models.tiny.recipe import RECIPES, TinyRecipe, model_name
from fedprag.shared.models.tiny.shipped import SHIPPED_ROOT, ShippedModelError, shipped_model, verified


@pytest.mark.environment  # sets environment variables (tests/phases.py)
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


@pytest.mark.environment  # sets environment variables (tests/phases.py)
def test_the_default_models_pretrained_generator_ships_and_loads_without_training(tmp_path, monkeypatch):
    """A change to the generator's training code or to the default [distilled] settings gives a new
    cache key: this fails until the generator is made again (fedprag model build-generator --ship)."""
    from fedprag.shared.lora.layers import attach_lora
    from fedprag.shared.methods.distilled import DistilledConfig, serializer
    from fedprag.shared.models.loading import load_causal_lm

    monkeypatch.setenv("FEDPRAG_HOME", str(tmp_path))  # an empty cache: nothing may be trained
    monkeypatch.setattr(serializer, "train_generator", lambda *a, **k: pytest.fail("the generator was trained"))
    base = load_causal_lm("tiny")
    _, path = serializer.cached_generator(base, attach_lora(base.model), DistilledConfig(), show_progress=False)
    assert path.parent == serializer.SHIPPED and not (tmp_path / "generators").exists()


def test_a_damaged_shipped_generator_is_refused(tmp_path, monkeypatch):
    from fedprag.shared.lora.layers import attach_lora
    from fedprag.shared.methods.distilled import DistilledConfig, serializer
    from fedprag.shared.models.loading import load_causal_lm

    base = load_causal_lm("tiny")
    name = serializer.cache_dir(base.digest, DistilledConfig()).name
    shutil.copytree(serializer.SHIPPED / name, tmp_path / name)
    tensors = bytearray((tmp_path / name / "tensors.safetensors").read_bytes())
    tensors[-1] ^= 1
    (tmp_path / name / "tensors.safetensors").write_bytes(bytes(tensors))
    monkeypatch.setattr(serializer, "SHIPPED", tmp_path)
    with pytest.raises(ShippedModelError, match="tensors.safetensors does not match its sha256"):
        serializer.cached_generator(base, attach_lora(base.model), DistilledConfig(), show_progress=False)
