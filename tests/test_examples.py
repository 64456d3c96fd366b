"""Every example runs, at a small size."""

import importlib.util
import pathlib
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quickstart_runs_and_fits(capsys):
    result = load("quickstart").main(["--quick"])
    assert result["rosenbrock"] < 1e-6  # float32 limits L-BFGS-B here
    assert result["mlp"] < 0.1 * result["mlp_initial"]
    assert "L-BFGS" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_every_example_has_a_quick_mode(path):
    assert "--quick" in path.read_text()
