"""The built-in models that ship with fedprag, as package data: the first run trains nothing.

``shipped/<model name>/`` (the name is :func:`~fedprag.shared.models.tiny.recipe.model_name`, the
same as the build cache's) holds an ordinary Hugging Face checkpoint, the build's metrics and
recipe, and ``SHA256SUMS``. Every load checks each file against it, so a damaged or altered
install fails with an error instead of answering with other weights. ``fedprag model build-tiny
--ship`` rebuilds a recipe from nothing and writes it here; the build is deterministic, so a
rebuild gives the shipped weights bit for bit.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fedprag.shared.io import atomic_dir, file_sha256
from fedprag.shared.models.tiny.recipe import TinyFinish, TinyRecipe, model_name

SHIPPED_ROOT = Path(__file__).parent / "shipped"
SUMS = "SHA256SUMS"


class ShippedModelError(ValueError):
    """A shipped model's files do not match its SHA256SUMS."""


def verified(path: Path) -> Path:
    """``path`` once every file its ``SHA256SUMS`` lists has that hash (and no listed file is missing)."""
    for line in (path / SUMS).read_text().splitlines():
        expected, name = line.split(maxsplit=1)
        file = path / name
        if not file.is_file():
            raise ShippedModelError(f"shipped model {path.name}: {name} is missing; reinstall fedprag "
                                    "or rebuild it with 'fedprag model build-tiny'")
        if file_sha256(file) != expected:
            raise ShippedModelError(f"shipped model {path.name}: {name} does not match its sha256; reinstall "
                                    "fedprag or rebuild it with 'fedprag model build-tiny'")
    return path


def shipped_model(recipe: TinyRecipe | TinyFinish) -> Path | None:
    """The verified shipped checkpoint of ``recipe``, or ``None`` when fedprag does not ship it."""
    path = SHIPPED_ROOT / model_name(recipe)
    return verified(path) if (path / SUMS).is_file() else None


def ship(built: Path) -> Path:
    """Copy a built model directory into the package's shipped models, with its SHA256SUMS."""
    target = SHIPPED_ROOT / built.name
    files = sorted(f for f in built.iterdir() if f.is_file())
    with atomic_dir(target) as tmp:
        for file in files:
            shutil.copy2(file, tmp / file.name)
        (tmp / SUMS).write_text("".join(f"{file_sha256(f)}  {f.name}\n" for f in files))
        tmp.chmod(0o755)
        for file in tmp.iterdir():
            file.chmod(0o644)
    return target
