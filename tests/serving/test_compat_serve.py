"""serving.compat_serve: the Ray Serve internals genrec uses are checked against the installed Ray."""

from __future__ import annotations

import pytest

from serving import compat_serve


def test_the_installed_ray_is_the_supported_one():
    import ray

    assert ray.__version__ == compat_serve.SUPPORTED_RAY
    compat_serve.check_version()


def test_another_ray_is_an_error_naming_the_supported_version():
    with pytest.raises(RuntimeError, match=r"ray 2\.60\.0 .*ray 2\.61\.0 is installed.*ray\[serve\]==2\.60\.0"):
        compat_serve.check_version("2.61.0")
