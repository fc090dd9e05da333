"""tests/ingest helpers: make ``contract_strategies`` (shared hypothesis strategies) importable.

The suite runs with ``--import-mode=importlib``, which does not put test folders on ``sys.path``.
"""

import sys
from pathlib import Path

_here = str(Path(__file__).resolve().parent)
if _here not in sys.path:
    sys.path.insert(0, _here)
