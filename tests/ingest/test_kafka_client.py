"""KafkaConfig security settings: validation and the kafka-python keyword arguments every client gets."""

from __future__ import annotations

import pytest

from ingest.kafka_client import KafkaConfig, connect

SASL = dict(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="genrec")


def test_plaintext_adds_no_security_kwargs():
    kw = KafkaConfig("127.0.0.1:9092").common()
    assert not {k for k in kw if k.startswith(("security", "sasl", "ssl"))}


def test_sasl_ssl_maps_to_kafka_python_kwargs(tmp_path, monkeypatch):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    kw = KafkaConfig("k:9093", **SASL, ssl_cafile=str(ca), ssl_check_hostname=False).common()
    assert kw["security_protocol"] == "SASL_SSL"
    assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == \
        ("SCRAM-SHA-512", "genrec", "s3cret")
    assert kw["ssl_cafile"] == str(ca) and kw["ssl_check_hostname"] is False
    assert "ssl_certfile" not in kw


def test_ssl_with_client_certificate(tmp_path):
    files = {n: tmp_path / f"{n}.pem" for n in ("ca", "cert", "key")}
    for f in files.values():
        f.write_text("x")
    kw = KafkaConfig("k:9093", security_protocol="SSL", ssl_cafile=str(files["ca"]),
                     ssl_certfile=str(files["cert"]), ssl_keyfile=str(files["key"])).security()
    assert kw == {"security_protocol": "SSL", "ssl_cafile": str(files["ca"]), "ssl_certfile": str(files["cert"]),
                  "ssl_keyfile": str(files["key"]), "ssl_check_hostname": True}
    assert "sasl_mechanism" not in kw


def test_password_file_wins_over_env_and_is_stripped(tmp_path, monkeypatch):
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "from-env")
    cfg = KafkaConfig("k:9093", **SASL, sasl_password_file=str(pw))
    assert cfg.common()["sasl_plain_password"] == "from-file"
    monkeypatch.setenv("MY_PW", "named-env")
    assert KafkaConfig("k:9093", **SASL, sasl_password_env="MY_PW").sasl_secret() == "named-env"


def test_password_never_in_repr(monkeypatch):
    cfg = KafkaConfig("k:9093", **SASL, sasl_password="inline-secret", allow_plaintext_password=True)
    assert "inline-secret" not in repr(cfg)
    assert cfg.common()["sasl_plain_password"] == "inline-secret"


@pytest.mark.parametrize("kwargs, needle", [
    (dict(security_protocol="TLS"), "SASL_SSL"),
    (dict(security_protocol="SASL_SSL", sasl_username="u"), "sasl_mechanism"),
    (dict(security_protocol="SASL_SSL", sasl_mechanism="GSSAPI", sasl_username="u"), "SCRAM-SHA-256"),
    (dict(security_protocol="SASL_SSL", sasl_mechanism="PLAIN"), "sasl_username"),
    (dict(sasl_mechanism="PLAIN", sasl_username="u"), "does not use SASL"),
    (dict(**SASL, sasl_password="pw"), "allow_plaintext_password"),
    (dict(**SASL, sasl_password_env=""), "sasl_password_file"),
    (dict(ssl_cafile="/ca.pem"), "does not use TLS"),
    (dict(security_protocol="SSL", ssl_certfile="/c.pem"), "ssl_keyfile"),
])
def test_invalid_security_settings_name_the_fix(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        KafkaConfig("k:9093", **kwargs)


def test_missing_secret_or_file_is_a_clear_error_not_broker_unavailable(monkeypatch, tmp_path):
    from kafka import KafkaAdminClient

    monkeypatch.delenv("KAFKA_SASL_PASSWORD", raising=False)
    with pytest.raises(ValueError, match="KAFKA_SASL_PASSWORD"):
        connect(KafkaAdminClient, KafkaConfig("127.0.0.1:1", **SASL))
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "pw")
    with pytest.raises(FileNotFoundError, match="ssl_cafile"):
        connect(KafkaAdminClient, KafkaConfig("127.0.0.1:1", **SASL, ssl_cafile=str(tmp_path / "nope.pem")))
    with pytest.raises(FileNotFoundError, match="sasl_password_file"):
        KafkaConfig("k:1", **SASL, sasl_password_file=str(tmp_path / "nope")).common()


def test_plaintext_config_still_talks_to_the_embedded_broker(broker, topic_name):
    from ingest.topics import ensure_topics, existing_topics

    kafka = KafkaConfig(broker, namespace=f"{topic_name}.", security_protocol="PLAINTEXT")
    ensure_topics(kafka)   # the admin client
    assert kafka.topic("served") in existing_topics(kafka)   # a consumer


def test_config_file_section_builds_a_secure_kafka_config(tmp_path):
    from infra.config import load

    pw = tmp_path / "pw"
    pw.write_text("p")
    cfg_file = tmp_path / "genrec.yaml"
    cfg_file.write_text(f"kafka:\n  bootstrap: k:9093\n  security_protocol: SASL_SSL\n  sasl_mechanism: PLAIN\n"
                        f"  sasl_username: u\n  sasl_password_file: {pw}\n")
    kafka = load(cfg_file, environ={}, only=("kafka",))["kafka"]
    assert kafka.common()["sasl_plain_password"] == "p"
    with pytest.raises(ValueError, match="allow_plaintext_password"):
        load(cfg_file, environ={"GENREC_KAFKA__SASL_PASSWORD": "inline"}, only=("kafka",))


def test_every_client_class_genrec_creates_takes_the_security_kwargs(tmp_path, monkeypatch):
    """Producers, consumers, admin clients and the batch producer's KafkaClient all get ``common()``."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.client_async import KafkaClient

    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "pw")
    kw = KafkaConfig("k:9093", **SASL, ssl_cafile=str(ca)).common()
    for cls in (KafkaProducer, KafkaConsumer, KafkaAdminClient, KafkaClient):
        assert set(kw) - {"bootstrap_servers"} <= set(cls.DEFAULT_CONFIG), cls.__name__
