"""`import optiframe` is light: no backend, no optimizer library and no optional dependency
is imported until it is used."""

import subprocess
import sys

import pytest

# What `import optiframe` must not import: SciPy's optimizers, optax (imported with a
# transform or a run), and every optional dependency.
HEAVY = (
    "scipy.optimize", "optax", "nevergrad", "evosax", "diffrax", "optimistix", "equinox",
    "tqdm", "matplotlib", "dask", "sqlite3", "optiframe.plot", "pandas",
)


def imported_after(code):
    """The modules of HEAVY and optiframe's backends in sys.modules after `code`."""
    probe = (
        f"import sys\n{code}\n"
        f"print(','.join(m for m in sorted(sys.modules) if m in {HEAVY!r} "
        "or m.startswith('optiframe.backends.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(filter(None, out.stdout.strip().split(",")))


def test_import_pulls_no_backend_and_no_optimizer_library():
    assert imported_after("import optiframe") == {"optiframe.backends.base"}


@pytest.mark.parametrize("code, loaded, absent", [
    ("import optiframe as opf; opf.LBFGSB", {"optiframe.backends.scipy"}, {"scipy.optimize"}),
    ("import optiframe as opf; opf.EvoSax('SNES')", {"optiframe.backends.evosax"}, {"evosax"}),
])
def test_a_name_loads_its_backend_and_not_its_library(code, loaded, absent):
    seen = imported_after(code)
    assert loaded <= seen and not absent & seen


def test_public_names():
    import optiframe as opf

    for name in opf.__all__:
        assert hasattr(opf, name), name
    assert set(dir(opf)) == set(opf.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Adam'"):
        getattr(opf, "Adam")  # noqa: B009 (the lookup is the test)
