"""Local TLS and SuperNode-auth material: a verifiable chain, keys Flower can read, safe modes."""

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fedprag.cluster.certs import write_node_keys, write_tls


def test_server_certificate_is_signed_by_the_ca_for_loopback_and_extra_hosts(tmp_path):
    files = write_tls(tmp_path, hosts=["coordinator.internal"])
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "coordinator.internal" in names.get_values_for_type(x509.DNSName)
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert files.server_key.stat().st_mode & 0o777 == 0o600
    assert files.ca_cert.stat().st_mode & 0o777 == 0o644


def test_node_keys_are_nist_ec_in_openssh_format(tmp_path):
    keys = write_node_keys(tmp_path, "site-0")
    private = load_ssh_private_key(keys.private_key.read_bytes(), None)
    public = load_ssh_public_key(keys.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(public.curve, ec.SECP384R1)
    assert private.public_key().public_numbers() == public.public_numbers()
    assert keys.private_key.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("name", ["", "../escape", ".hidden"])
def test_bad_node_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="node name"):
        write_node_keys(tmp_path, name)


def test_certificates_need_a_positive_lifetime(tmp_path):
    with pytest.raises(ValueError, match="days"):
        write_tls(tmp_path, days=0)
