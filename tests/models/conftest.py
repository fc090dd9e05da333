"""Puts ``tests/models`` on ``sys.path`` so every model test can import :mod:`fastdec_helpers`.

The suite runs with ``--import-mode=importlib``, which does not add test folders to ``sys.path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_here = str(Path(__file__).parent)
if _here not in sys.path:
    sys.path.insert(0, _here)
