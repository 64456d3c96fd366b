"""`import optiframe` is light: optional dependencies are imported lazily."""

import subprocess
import sys

OPTIONAL = ("nevergrad", "diffrax", "equinox", "tqdm", "matplotlib", "dask", "evosax")


def test_import_does_not_pull_optional_dependencies():
    code = f"import sys, optiframe\nprint(','.join(m for m in {OPTIONAL!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names():
    import optiframe as opf

    for name in opf.__all__:
        assert hasattr(opf, name), name
