"""The suite's order, and the session resources that start early and stop after their last test.

A federation of real processes takes a minute or two to start and keeps a core about half busy
while it does (it mostly waits on processes and on Flower's polls); the unit tests keep about one
of the 2 cores busy. So the suite runs in phases: the few tests that change the process's
environment (mark ``environment``: the processes started in the background would inherit it),
unit tests, then the integration tests that start their own processes, then those that share one
of :data:`_LAST`, in its order: the session's DistilledPRAG federation, its Poly-PRAG federation,
the rebuild of the built-in model, and the federation of sites on other hosts.

The resources registered as early (those, and the deployment module's federation) start in the
background at the first test that leaves the environment alone, one after the other in the order
the tests will need them, and the first test that uses one waits for it. So the rebuild (a minute
of CPU) and the hosts' federation (a minute of waiting on processes) run while the earlier tests
run. Each shared resource stops once the last selected test that uses it is done, not at the
session's end (idle, it would still cost the tests after it CPU), and resources stop in the
reverse of the order they started in.

A test uses a shared resource by naming its fixture (directly or through another fixture), or,
where it asks for one by name at run time, by the mark ``uses("<fixture>")``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

import pytest

_LAST = ("distilled_federation", "poly_federation", "rebuilt_short", "hosts_federation")
"""Integration tests that use one of these run after the others, in this order."""


class Shared:
    """One session resource: a context manager entered once, in the background or on first use,
    and left after the last test that uses it."""

    def __init__(self, name: str, resource: Callable[[Path], AbstractContextManager], early: bool):
        self.name, self.resource, self.early = name, resource, early
        self._stack: ExitStack | None = None
        self._value: object = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._started = self._closed = False

    def start(self, root: Path) -> None:
        """Enter the resource (its work directory under ``root``); once only, and never once it is
        stopped. Errors are kept for :meth:`value`."""
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
            _start_order.append(self.name)
        stack = ExitStack()
        try:
            (root / self.name).mkdir()
            self._value = stack.enter_context(self.resource(root / self.name))
            self._stack = stack
        except BaseException as exc:  # noqa: BLE001 (pytest.fail is one): re-raised in the test that asks
            stack.close()
            self._error = exc
        finally:
            self._ready.set()

    def value(self, root: Path) -> object:
        """The running resource, started here if nothing started it; waits for a background start."""
        if self._closed:
            raise RuntimeError(f"the shared resource {self.name} was stopped after its last planned test; "
                               f"a test that asks for it at run time needs the mark uses('{self.name}')")
        self.start(root)
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self._value

    def started_elsewhere(self, timeout: float = 1800.0) -> object:
        """The resource once a test has started it: for a background start that needs a resource only
        the main thread may start (Ray: its processes die with the thread that started them)."""
        if not self._ready.wait(timeout) or self._error is not None or self._closed:
            raise RuntimeError(f"the shared resource {self.name} failed or was stopped before it was needed")
        return self._value

    def close(self) -> None:
        """Start it no more, and wake anyone waiting for a start that will not come."""
        with self._lock:
            self._closed = True
            if not self._started:
                self._ready.set()

    def stop(self) -> None:
        """Leave the resource (waiting for a start under way to finish first), and start it no more."""
        self.close()
        self._ready.wait()
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()


_registry: dict[str, Shared] = {}
_last_user: dict[str, str] = {}
_start_order: list[str] = []
"""The shared resources in the order they started: they stop in the reverse order, so a resource
stops before one it may use (the hosts' federation before the session's Ray)."""
_starter: threading.Thread | None = None


def register(name: str, resource: Callable[[Path], AbstractContextManager], early: bool = False) -> None:
    """Make ``resource`` (given its work directory) the shared session resource ``name``;
    ``early``: start it in the background (:func:`start_early`)."""
    _registry[name] = Shared(name, resource, early)


def shared(name: str) -> Shared:
    """The shared session resource ``name``."""
    return _registry[name]


def uses(item: pytest.Item, name: str) -> bool:
    """Whether ``item`` uses the shared resource ``name``."""
    return name in getattr(item, "fixturenames", ()) or any(m.args == (name,) for m in item.iter_markers("uses"))


def phase(item: pytest.Item) -> int:
    """Where ``item`` runs: tests that change the process's environment first (0), before anything
    starts in the background (whose processes would inherit it); then unit tests (1); then
    integration tests by the shared resource of :data:`_LAST` they use."""
    if item.get_closest_marker("environment") is not None:
        return 0
    if item.get_closest_marker("integration") is None:
        return 1
    return 2 + next((i for i, name in enumerate(_LAST, 1) if uses(item, name)), 0)


def order(items: list[pytest.Item]) -> None:
    """Sort ``items`` by phase, in place; within a phase they keep pytest's order."""
    items.sort(key=phase)


def plan(items: list[pytest.Item]) -> None:
    """Note the last of the selected ``items`` that uses each shared resource."""
    _last_user.clear()
    for item in items:
        for name in _registry:
            if uses(item, name):
                _last_user[name] = item.nodeid


def start_early(root: Path) -> None:
    """Start, one after the other in a background thread and in the order the selected tests first
    use them, the early resources those tests use (once a session)."""
    global _starter
    if _starter is not None:
        return
    wanted = [_registry[name] for name in _last_user if _registry[name].early]  # first use first
    if wanted:
        _starter = threading.Thread(target=lambda: [shared.start(root) for shared in wanted],
                                    name="shared-resources", daemon=True)
        _starter.start()


def _stop(names: list[str]) -> None:
    """Stop these resources, the last started first."""
    for name in sorted(names, key=lambda n: -_start_order.index(n) if n in _start_order else 0):
        _registry[name].stop()


def release_after(item: pytest.Item) -> None:
    """Stop every shared resource whose last selected test is ``item``."""
    _stop([name for name, nodeid in _last_user.items() if nodeid == item.nodeid])


def stop_all() -> None:
    """Stop every shared resource still running, and start no more (the session's end, also after
    ``-x`` or an interrupt while the background thread still has resources to start): every one
    is closed first, so the background thread starts nothing more while the others stop."""
    for shared in _registry.values():
        shared.close()
    _stop(list(_registry))
    if _starter is not None:
        _starter.join()
