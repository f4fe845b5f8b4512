"""TLS and SuperNode-authentication material for a Flower deployment on one machine.

``fedprag certs`` writes, into one folder:

* ``ca.crt`` / ``ca.key`` — a private certificate authority, valid only for this deployment;
* ``server.pem`` / ``server.key`` — the SuperLink's certificate, signed by that CA, for the
  loopback names (``127.0.0.1``, ``::1``, ``localhost``) plus any extra host names asked for;
* ``nodes/<name>`` / ``nodes/<name>.pub`` — one ECDSA P-384 key pair per SuperNode, in the
  OpenSSH formats ``flower-supernode --auth-supernode-private-key`` and
  ``flwr supernode register`` read;
* ``routing/<name>.pem`` / ``routing/<name>.key`` — a site daemon's routing-service certificate,
  signed by the same CA, so the query API verifies every site against one root.

It is meant for local and test deployments; a production federation uses certificates from the
operator's own CA. Private keys are written with mode 0600, every file atomically.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedprag.shared.io import atomic_path

LOOPBACK_NAMES: tuple[str, ...] = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the CA certificate and the SuperLink's certificate and key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKeys:
    """One SuperNode's authentication key pair (OpenSSH formats)."""

    private_key: Path
    public_key: Path


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        tmp.chmod(0o600 if private else 0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _subject_alternative_names(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def write_tls(out_dir: str | Path, hosts: Sequence[str] = (), days: int = 30) -> TlsFiles:
    """Create a CA and a SuperLink certificate for the loopback names plus ``hosts``."""
    if days < 1:
        raise ValueError(f"days: a certificate must be valid for at least 1 day (got {days})")
    out = Path(out_dir)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedprag local CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(out / "ca.crt", out / "server.pem", out / "server.key")
    _write(out / "ca.key", _key_pem(ca_key), private=True)
    _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _sign_server(out, "fedprag superlink", files.server_cert, files.server_key, hosts, days)
    return files


def _sign_server(ca_dir: Path, common_name: str, cert_path: Path, key_path: Path, hosts: Sequence[str],
                 days: int) -> None:
    """A server certificate for the loopback names plus ``hosts``, signed by the CA in ``ca_dir``."""
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(_subject_alternative_names([*LOOPBACK_NAMES, *hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def write_routing_cert(ca_dir: str | Path, name: str, hosts: Sequence[str] = (), days: int = 30) -> TlsFiles:
    """A site's routing-service certificate and key under ``<ca_dir>/routing``, signed by the CA there."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"site name: expected a plain file name, got {name!r}")
    out = Path(ca_dir)
    files = TlsFiles(out / "ca.crt", out / "routing" / f"{name}.pem", out / "routing" / f"{name}.key")
    _sign_server(out, f"fedprag routing {name}", files.server_cert, files.server_key, hosts, days)
    return files


def write_node_keys(out_dir: str | Path, name: str) -> NodeKeys:
    """Create the authentication key pair of the SuperNode ``name`` under ``<out_dir>/nodes``."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"node name: expected a plain file name, got {name!r}")
    key = ec.generate_private_key(ec.SECP384R1())
    keys = NodeKeys(Path(out_dir) / "nodes" / name, Path(out_dir) / "nodes" / f"{name}.pub")
    _write(keys.private_key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()), private=True)
    _write(keys.public_key, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                           serialization.PublicFormat.OpenSSH) + b"\n")
    return keys
