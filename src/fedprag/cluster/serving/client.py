"""A small client of the query API, for the demo and the serving benchmark: many questions over
HTTP at a bounded concurrency, each answer with its latency and trace."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx


class QueryFailed(RuntimeError):
    """The query API refused or failed a question."""


@dataclass(frozen=True)
class Answer:
    text: str
    pool_version: int
    seconds: float
    batch_size: int


class QueryClient:
    """``POST /v1/query`` for many questions, ``concurrency`` in flight at once."""

    def __init__(self, url: str, api_key: str, concurrency: int = 16, timeout: float = 120.0):
        """``concurrency`` is the default for :meth:`ask_many`; connections are not capped."""
        self.url, self.concurrency = url.rstrip("/"), concurrency
        self._http = httpx.Client(headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout,
                                  limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))

    def ask_one(self, question: str, **options: object) -> Answer:
        started = time.perf_counter()
        reply = self._http.post(f"{self.url}/v1/query", json={"question": question, **options})
        if reply.status_code != 200:
            raise QueryFailed(f"HTTP {reply.status_code}: {reply.text[:300]}")
        body = reply.json()
        return Answer(body["answer"], body["pool_version"], time.perf_counter() - started, body["trace"]["batch_size"])

    def ask_many(self, questions: Sequence[str], concurrency: int | None = None, **options: object) -> list[Answer]:
        """Every question's answer, in order, with at most ``concurrency`` requests in flight."""
        with ThreadPoolExecutor(concurrency or self.concurrency) as pool:
            return list(pool.map(lambda q: self.ask_one(q, **options), questions))

    def answers(self, questions: Sequence[str]) -> list[str]:
        return [a.text for a in self.ask_many(questions)]

    def close(self) -> None:
        self._http.close()
