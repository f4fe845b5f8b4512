"""fedprag's folders are its import names, and its packages import only downwards, with no cycle."""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"

# Every package, lowest first: a package may import only packages of a lower level (and itself);
# packages of one level are peers that never import each other. The modules of ``fedprag.shared``
# that no subpackage holds (io, log, wire, …) are its foundation, ``shared``.
LEVELS = (
    ("fedprag.shared.proto",),
    ("shared",),
    ("fedprag.shared.data", "fedprag.shared.retrieval", "fedprag.shared.lora"),
    ("fedprag.shared.models",),
    ("fedprag.shared.methods",),
    ("fedprag.shared.query",),
    ("fedprag.shared.eval",),
    ("fedprag.shared.config",),
    ("fedprag.client", "fedprag.coordinator"),
    ("fedprag.cluster.serving",),
    ("fedprag.cluster",),
    ("fedprag.cli",),
)
LEVEL = {package: level for level, packages in enumerate(LEVELS) for package in packages}
HARNESS = ("fedprag.shared.eval.harness", "fedprag.shared.eval.methods", "fedprag.shared.eval.federated")


def _modules() -> dict[str, Path]:
    """Every module under src/, by the import name its path gives it."""
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def package_of(module: str) -> str:
    """The package of ``module`` in :data:`LEVELS` (the longest that names it; else the foundation)."""
    named = [p for p in LEVEL if module == p or module.startswith(p + ".")]
    return max(named, key=len) if named else "shared"


def _imports(source: str) -> list[str]:
    """The fedprag modules ``source`` imports, at any depth of its code (typing-only imports too)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return [n for n in names if n == "fedprag" or n.startswith("fedprag.")]


def upward_imports(sources: dict[str, str]) -> list[str]:
    """Each import in ``sources`` (module name: code) of a package not below the importer's."""
    return [f"{name} ({package_of(name)}) imports {target}" for name, source in sources.items()
            for target in map(package_of, _imports(source))
            if target != package_of(name) and LEVEL[target] >= LEVEL[package_of(name)]]


def test_every_module_lives_at_its_import_name_under_src():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["packages"] == {"find": {"where": ["src"]}} and "package-dir" not in setuptools
    assert {name.split(".")[0] for name in _modules()} == {"fedprag"}
    assert not [p for p in ROOT.iterdir() if p.name in ("shared", "client", "coordinator", "cluster")]


def test_packages_import_only_downwards_so_never_in_a_circle():
    """Every import goes to a lower level, so no chain of imports can come back to where it started."""
    assert upward_imports({name: path.read_text(encoding="utf-8") for name, path in _modules().items()}) == []


def test_the_query_path_does_not_go_through_the_evaluation_harness():
    offenders = [f"{path.relative_to(ROOT)}: {n}" for name, path in _modules().items()
                 if name.startswith("fedprag.cluster.serving") for n in _imports(path.read_text(encoding="utf-8"))
                 if n.startswith(HARNESS)]
    assert offenders == []


def test_the_rule_catches_an_upward_import_a_peer_import_and_a_cycle():
    assert upward_imports({"fedprag.shared.methods.poly.model": "from fedprag.shared.eval.harness import evaluate"})
    assert upward_imports({"fedprag.client.daemon": "import fedprag.coordinator.app"})  # peers
    cycle = {"fedprag.cluster.demo": "from fedprag.cluster.serving import app",
             "fedprag.cluster.serving.app": "def f():\n    from fedprag.cluster.demo import running_federation"}
    assert upward_imports(cycle) == ["fedprag.cluster.serving.app (fedprag.cluster.serving) imports fedprag.cluster"]
    assert not upward_imports({"fedprag.cluster.serving.app": "from fedprag.shared.query import QueryEngine"})


@pytest.mark.parametrize("modules", [
    "fedprag.cluster.serving.ingress",  # the ingress holds no model
    "fedprag.cluster.coordinator, fedprag.cluster.serving.ray_start",  # the driver of the coordinator's actor
])
def test_processes_that_hold_no_model_load_no_torch(modules):
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
