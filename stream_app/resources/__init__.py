"""Files that ship inside the package: the Avro schemas, the schema packs and the example configs.

``avro/``, ``schemas/`` and ``examples/`` at the top of the source tree are the source of truth;
this package holds symbolic links to them, which the wheel build resolves into copies, so an
installed package (wheel, pipx, container image) reads the same files as a source checkout.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# The package is installed as plain files (never zipped), so its resources are real paths.
_ROOT = Path(str(files(__name__)))

AVRO_DIR = _ROOT / "avro"
SCHEMAS_DIR = _ROOT / "schemas"
EXAMPLES_DIR = _ROOT / "examples"
