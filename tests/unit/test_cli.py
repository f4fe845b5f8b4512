"""The command line: bad input exits 2 with a message naming the file and row; --help explains."""

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedprag.cli import main
from fedprag.shared.data.schema import PASSAGES_FILE


def test_data_make_then_validate(tmp_path, capsys):
    assert main(["data", "make", "--out", str(tmp_path), "--people", "5", "--sites", "2"]) == 0
    assert main(["data", "validate", str(tmp_path)]) == 0
    assert "ok: 5 passages" in capsys.readouterr().out


def test_bad_dataset_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "make", "--out", str(tmp_path), "--people", "5"]) == 0
    rows = pq.read_table(tmp_path / PASSAGES_FILE).to_pylist()
    rows[4]["text"] = ""
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / PASSAGES_FILE)
    assert main(["data", "validate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "fedprag: error:" in err and "passages.parquet, row 4" in err


def test_bad_config_value_names_the_field(tmp_path, capsys):
    assert main(["--set", "benchmark.people=many", "data", "make", "--out", str(tmp_path)]) == 2
    assert "benchmark.people: expected int" in capsys.readouterr().err


def test_unknown_model_path_never_downloads(tmp_path, capsys):
    assert main(["eval", "--model", "meta-llama/Llama-3.2-1B", "--out", str(tmp_path), "--methods", "closed_book"]) == 2
    assert "never downloaded" in capsys.readouterr().err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("model", "data", "eval", "build-tiny"):
        assert command in out


def test_certs_writes_what_superlink_and_supernodes_need(tmp_path, capsys):
    assert main(["certs", "--out", str(tmp_path), "--node", "site-a", "--node", "site-b"]) == 0
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert {"ca.crt", "server.pem", "server.key", "nodes/site-a", "nodes/site-a.pub", "nodes/site-b.pub"} <= written
    assert "coordinator.keys_dir" in capsys.readouterr().out


def test_coordinator_run_without_its_files_names_the_missing_one(tmp_path, capsys):
    (tmp_path / "ca.crt").write_text("not checked before the others are there")
    assert main(["coordinator", "run", "--set", f"coordinator.ca_cert={tmp_path / 'ca.crt'}"]) == 2
    assert "coordinator.tls_cert: required" in capsys.readouterr().err
    assert main(["federate", "--coordinator", "10.0.0.1:9092"]) == 2  # no CA to verify it with
    assert "coordinator.ca_cert" in capsys.readouterr().err


def test_federate_without_site_stores_is_a_clear_error(tmp_path, capsys):
    assert main(["federate", "--work-dir", str(tmp_path)]) == 2
    assert "no site stores" in capsys.readouterr().err


def test_the_cli_and_the_configuration_import_no_torch():
    """A command that loads no model (help, status, a bad flag, the federation's launcher) starts in
    under a second: the configuration sections live in modules that import no torch."""
    code = "import sys, fedprag.cli; print(sorted({'torch', 'transformers', 'ray', 'flwr'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
