"""Test-session environment (quiet third-party telemetry, no hub access, OpenMP threads that sleep
when they wait) and the suite's order and shared resources (tests/phases.py)."""

import os

import pytest

from tests import phases

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests' processes (this one, the daemons, the replicas, the builds) share 2 cores. torch's
# OpenMP threads spin while they wait for each other, burning the cores the other processes need:
# beside a busy torch process, the model-rebuild test took 72 s spinning and 40 s sleeping.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.hookimpl(trylast=True)  # after pytest's own grouping by fixture scope, which the sort keeps
def pytest_collection_modifyitems(items):
    phases.order(items)


def pytest_collection_finish(session):
    phases.plan(session.items)


@pytest.fixture(scope="session")
def shared_resources(tmp_path_factory):
    """The folder under which the shared resources work; stops what is still running at the session's end."""
    yield tmp_path_factory.mktemp("shared")
    phases.stop_all()


@pytest.fixture(autouse=True)
def start_shared_resources(request):
    """Starts the early shared resources in the background, at the first test that leaves the
    process's environment alone (see tests/phases.py)."""
    if request.node.get_closest_marker("environment") is None:
        phases.start_early(request.getfixturevalue("shared_resources"))


@pytest.hookimpl(trylast=True)  # after pytest has torn down the module fixtures built on the resource
def pytest_runtest_teardown(item):
    phases.release_after(item)
