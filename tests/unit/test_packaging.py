"""fedprag installs under one import name, and nothing imports its folders as top-level modules."""

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("shared", "client", "coordinator", "cluster")
HARNESS = ("fedprag.shared.eval.harness", "fedprag.shared.eval.methods", "fedprag.shared.eval.federated")


def _sources() -> list[Path]:
    return [p for p in ROOT.rglob("*.py") if not ({".venv", "build", ".git"} & set(p.relative_to(ROOT).parts))]


def test_every_package_folder_installs_under_fedprag():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = {"fedprag." + ".".join(p.parent.relative_to(ROOT).parts)
             for folder in FOLDERS for p in (ROOT / folder).rglob("__init__.py")}
    assert found == listed
    assert setuptools["package-dir"] == {f"fedprag.{f}": f for f in FOLDERS}


def test_no_module_imports_a_folder_as_a_top_level_name():
    offenders = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in FOLDERS]
    assert offenders == []


def test_lower_layers_never_import_upwards():
    """Model, LoRA, method and data code sit below evaluation and the launchers, and the cluster's
    query path does not go through the evaluation harness."""
    lower = ("shared/models", "shared/lora", "shared/methods", "shared/data", "shared/retrieval")
    upper = ("fedprag.shared.eval", "fedprag.shared.cli", "fedprag.shared.config", "fedprag.client",
             "fedprag.cluster", "fedprag.coordinator")
    offenders = []
    for folder in lower:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(upper):
                    offenders.append(f"{path.relative_to(ROOT)}: {node.module}")
    for path in (ROOT / "cluster").rglob("*.py"):
        offenders += [f"{path.relative_to(ROOT)}: {n.module}" for n in ast.walk(ast.parse(path.read_text()))
                      if isinstance(n, ast.ImportFrom) and (n.module or "").startswith(HARNESS)]
    assert offenders == []
