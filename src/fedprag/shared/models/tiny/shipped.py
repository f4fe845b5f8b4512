"""The built-in models that ship with fedprag, as package data: the first run trains nothing.

``shipped/<model name>/`` (the name is :func:`~fedprag.shared.models.tiny.recipe.model_name`, the
same as the build cache's) holds an ordinary Hugging Face checkpoint, the build's metrics and
recipe, and ``SHA256SUMS``. Every load checks each file against it, so a damaged or altered
install fails with an error instead of answering with other weights. ``fedprag model build-tiny
--ship`` rebuilds a recipe from nothing and writes it here.

What a rebuild reproduces depends on the recipe's numerics (:mod:`~fedprag.shared.models.tiny.numerics`):

* ``portable`` recipes (``small``, ``short``): every file but ``metrics.json``'s build time, bit
  for bit, on any x86-64 CPU with AVX2 (:func:`differing` is empty).
* ``native`` recipes (the default model and its stages, built on an Intel Xeon before numerics
  were pinned): the same tokenizer and configuration, and on another CPU family weights whose
  figures hold but whose bytes differ (docs/experiments.md §1.6).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fedprag.shared.io import atomic_dir, file_sha256
from fedprag.shared.models.tiny.recipe import TinyFinish, TinyRecipe, model_name

SHIPPED_ROOT = Path(__file__).parent / "shipped"
SUMS = "SHA256SUMS"
METRICS = "metrics.json"


class ShippedModelError(ValueError):
    """A shipped model's files do not match its SHA256SUMS."""


REBUILD = "'fedprag model build-tiny' for a base model, 'fedprag model build-generator' for a generator"


def verified(path: Path) -> Path:
    """``path`` once every file its ``SHA256SUMS`` lists has that hash (and no listed file is missing)."""
    for line in (path / SUMS).read_text().splitlines():
        expected, name = line.split(maxsplit=1)
        file = path / name
        if not file.is_file():
            raise ShippedModelError(f"shipped model {path.name}: {name} is missing; reinstall fedprag "
                                    f"or rebuild it ({REBUILD})")
        if file_sha256(file) != expected:
            raise ShippedModelError(f"shipped model {path.name}: {name} does not match its sha256; reinstall "
                                    f"fedprag or rebuild it ({REBUILD})")
    return path


def shipped_model(recipe: TinyRecipe | TinyFinish) -> Path | None:
    """The verified shipped checkpoint of ``recipe``, or ``None`` when fedprag does not ship it."""
    path = SHIPPED_ROOT / model_name(recipe)
    return verified(path) if (path / SUMS).is_file() else None


def differing(built: Path) -> list[str] | None:
    """The files of the model directory ``built`` whose bytes differ from the shipped copy of the
    same model (``metrics.json`` aside: it records the build's time); ``None`` when none ships."""
    shipped = SHIPPED_ROOT / built.name
    if not (shipped / SUMS).is_file():
        return None
    listed = [line.split(maxsplit=1) for line in (shipped / SUMS).read_text().splitlines()]
    return [name for expected, name in listed
            if name != METRICS and (not (built / name).is_file() or file_sha256(built / name) != expected)]


def ship(built: Path, root: Path = SHIPPED_ROOT) -> Path:
    """Copy a built model directory into the package's shipped models under ``root`` (the base
    models', or a method's), with its SHA256SUMS."""
    target = root / built.name
    files = sorted(f for f in built.iterdir() if f.is_file())
    with atomic_dir(target) as tmp:
        for file in files:
            shutil.copy2(file, tmp / file.name)
        (tmp / SUMS).write_text("".join(f"{file_sha256(f)}  {f.name}\n" for f in files))
        tmp.chmod(0o755)
        for file in tmp.iterdir():
            file.chmod(0o644)
    return target
