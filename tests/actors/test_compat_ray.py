"""actors.compat_ray: Ray internals are checked against the installed Ray."""

from __future__ import annotations

import pytest

from actors import compat_ray


def test_concurrency_group_is_set_where_ray_reads_it():
    class C:
        def m(self):
            return 1

    compat_ray.set_concurrency_group(C.m, "reads")
    assert C.m.__ray_concurrency_group__ == "reads"


def test_another_ray_is_an_error_naming_the_supported_version():
    with pytest.raises(RuntimeError, match=r"ray 2\.60\.0 .*ray 3\.0\.0 is installed"):
        compat_ray.check_version("3.0.0")
