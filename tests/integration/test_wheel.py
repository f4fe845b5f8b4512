"""A wheel built from the repository installs as one top-level name, ships the built-in model, and runs."""

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_the_wheel_installs_fedprag_alone_with_its_models_and_the_cli_runs(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("fedprag-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"fedprag"}
    shipped = [n for n in names if "/models/tiny/shipped/" in n]
    assert any(n.endswith("/SHA256SUMS") for n in shipped) and any(n.endswith("/model.safetensors") for n in shipped)
    assert any("/methods/distilled/shipped/" in n and n.endswith("/tensors.safetensors") for n in names)  # the generator

    # A fresh environment: the wheel alone, with the test environment's dependencies on its path
    # (not its editable fedprag, whose import hook is never loaded from there).
    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=True)
    python = fresh / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    where = subprocess.run([str(python), "-c", "import fedprag.cli as c; print(c.__file__)"], cwd=tmp_path,
                           check=True, capture_output=True, text=True).stdout
    assert where.startswith(str(fresh))
    for argv in (["--help"], ["demo", "--help"]):
        out = subprocess.run([str(fresh / "bin" / "fedprag"), *argv], cwd=tmp_path, check=True,
                             capture_output=True, text=True).stdout
        assert "usage: fedprag" in out
