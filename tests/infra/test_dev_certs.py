"""infra/make_dev_certs.sh makes what the docker-compose SASL_SSL listener and genrec's clients need: a CA,
broker PEM keystores whose certificates verify for 127.0.0.1 and localhost, and a random SASL password."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_dev_certificates_pass_a_tls_handshake_with_hostname_checks(tmp_path):
    out = tmp_path / "certs"
    subprocess.run([str(REPO / "infra" / "make_dev_certs.sh"), str(out)], check=True, capture_output=True, timeout=120)
    env = (out / "kafka.env").read_text()
    assert env.startswith("KAFKA_SASL_PASSWORD=") and len(env.strip()) > 40
    assert (out / "kafka.env").stat().st_mode & 0o077 == 0
    pem = (out / "kafka1.pem").read_text()
    assert pem.startswith("-----BEGIN PRIVATE KEY-----") and "BEGIN CERTIFICATE" in pem   # PKCS#8, then the cert

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(out / "kafka1.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"ok")

    threading.Thread(target=serve, daemon=True).start()
    client_ctx = ssl.create_default_context(cafile=str(out / "ca.pem"))   # what kafka.ssl_cafile gives the client
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.recv(2) == b"ok"
    listener.close()


def test_compose_brokers_have_a_sasl_ssl_listener_on_loopback():
    doc = yaml.safe_load((REPO / "infra" / "docker-compose.yml").read_text())
    for n in (1, 2, 3):
        svc = doc["services"][f"kafka{n}"]
        env = svc["environment"]
        assert f"SECURE://127.0.0.1:{n}9094" in env["KAFKA_ADVERTISED_LISTENERS"]
        assert "SECURE:SASL_SSL" in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
        assert f"127.0.0.1:{n}9094:{n}9094" in svc["ports"]
        assert "KAFKA_SASL_PASSWORD" in env["KAFKA_LISTENER_NAME_SECURE_PLAIN_SASL_JAAS_CONFIG"]
        assert all(p.startswith("127.0.0.1:") for p in svc["ports"])
