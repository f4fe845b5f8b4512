"""What the router and the generator both do with a ``@serve.batch``: answer it group by group."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from itertools import groupby
from typing import TypeVar

from fedprag.shared.log import get_logger

log = get_logger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

GROUP_ERRORS = (OSError, ValueError, RuntimeError, TypeError)
"""What a group's work may raise and fail that group with; anything else is a bug and fails the batch."""


def by_group(items: Sequence[Item], key: Callable[[Item], Hashable],
             answer: Callable[[list[Item]], list[Result]], failed: Callable[[Exception], Result],
             event: str) -> list[Result]:
    """Each item's result, in order: items of equal ``key`` are answered together by ``answer``; a
    group whose ``answer`` raises gets ``failed(error)`` for each of its items (logged as ``event``),
    so one bad group never fails the others."""
    out: list[Result | None] = [None] * len(items)
    order = sorted(range(len(items)), key=lambda i: key(items[i]))
    for _, group in groupby(order, key=lambda i: key(items[i])):
        rows = list(group)
        try:
            results = answer([items[i] for i in rows])
        except GROUP_ERRORS as exc:
            log.error(event, error=f"{type(exc).__name__}: {exc}"[:300])
            results = [failed(exc)] * len(rows)
        for i, result in zip(rows, results):
            out[i] = result
    return out  # type: ignore[return-value]
