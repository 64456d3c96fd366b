"""Import the repository's scripts (examples/, benchmarks/) as modules in the tests."""

import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES, BENCHMARKS = ROOT / "examples", ROOT / "benchmarks"


def load(path: pathlib.Path):
    """The script at `path` as a module (registered, as dataclasses require), able to
    import its neighbours as it can when run."""
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module
