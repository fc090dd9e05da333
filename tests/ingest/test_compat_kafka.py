"""ingest.compat_kafka: kafka-python internals are checked against the installed release line."""

from __future__ import annotations

import pytest

from ingest import compat_kafka


def test_the_installed_kafka_python_is_supported_and_its_internals_are_there():
    compat_kafka.check_version()
    assert compat_kafka.record_internals().PartitionRecords.__name__ == "PartitionRecords"


@pytest.mark.parametrize("version", ["2.2.15", "3.0.0"])
def test_another_release_line_is_an_error_naming_the_supported_one(version):
    with pytest.raises(RuntimeError, match=rf"kafka-python 2\.3\.x .*kafka-python {version} is installed"):
        compat_kafka.check_version(version)
    compat_kafka.check_version("2.3.9")
