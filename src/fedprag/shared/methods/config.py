"""The base of every method's hyper-parameters; it imports no torch, so the configuration (and
with it every ``fedprag`` command) loads without it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar, Self


class MethodConfig:
    """Base of a method's hyper-parameters (a frozen dataclass): the fields that must be
    positive, checked once here, and the LoRA scale ``alpha / rank``.

    Subclasses name their configuration ``SECTION`` (errors say ``<section>.<field>``), list
    ``POSITIVE`` fields, and put any further rule in :meth:`check`.
    """

    SECTION: ClassVar[str]
    POSITIVE: ClassVar[tuple[str, ...]] = ()

    @property
    def scale(self) -> float:
        """LoRA's scale, ``alpha / rank``."""
        return self.alpha / self.rank  # type: ignore[attr-defined]

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field out of range."""
        for name in self.POSITIVE:
            value = getattr(self, name)
            if value <= 0:
                kind = "a positive integer" if isinstance(value, int) else "positive"
                raise ValueError(f"{self.SECTION}.{name}: must be {kind}")
        self.check()

    def check(self) -> None:
        """Rules beyond positivity; the default has none."""

    def to_numbers(self) -> dict[str, float]:
        """The numeric settings only, the form the wire schema admits (subclasses add their choices)."""
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                if isinstance(getattr(self, f.name), (int, float))}

    @classmethod
    def from_numbers(cls, numbers: Mapping[str, float], **choices: object) -> Self:
        """Inverse of :meth:`to_numbers`, validated: unknown keys are ignored, and fields that are
        not numbers take ``choices`` or keep their default."""
        kinds = {f.name: f.type for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        values: dict[str, object] = dict(choices)
        for name, value in numbers.items():
            if kinds.get(name) in ("int", "bool"):
                values[name] = int(value) if kinds[name] == "int" else bool(value)
            elif kinds.get(name) == "float":
                values[name] = float(value)
        config = cls(**values)
        config.validate()
        return config
