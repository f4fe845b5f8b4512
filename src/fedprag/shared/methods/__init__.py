"""Parametric encoding methods, one folder each with the same files and roles, like PEFT's tuners:
``config``, ``layers``, ``trainer``, ``serializer`` and ``model`` (see :mod:`.base`).

Each method's ``model`` module exports ``CONFIG`` (its configuration class), ``VARIANTS`` (the names it answers to in evaluation) and
``encode_corpus(corpus, config, variant)``, which returns a
:class:`~fedprag.shared.methods.base.MethodModel` and what encoding cost. Adding a method is a new
folder, one line in :data:`REGISTRY` and its configuration section, named after the method, in
:class:`fedprag.shared.config.FedpragConfig`. A module may also list ``SWAPPED_PASSAGES``: variants
that the harness evaluates on passages neither retrieved nor gold for the question (the ablation
that checks an adapter depends on its documents).
"""

from __future__ import annotations

import importlib
from types import ModuleType

REGISTRY: dict[str, str] = {
    "prag": "fedprag.shared.methods.prag.model",
    "poly": "fedprag.shared.methods.poly.model",
    "distilled": "fedprag.shared.methods.distilled.model",
}


def method_model(name: str) -> ModuleType:
    """The ``model`` module of the method registered as ``name``."""
    return importlib.import_module(REGISTRY[name])


def method_of(variant: str) -> str:
    """The registered method whose ``VARIANTS`` include ``variant``; ``KeyError`` if none does."""
    for name in REGISTRY:
        if variant in method_model(name).VARIANTS:
            return name
    raise KeyError(variant)
