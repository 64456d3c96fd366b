"""optiframe: describe an optimisation problem once, solve it with optax, SciPy,
Nevergrad and more by changing one argument."""

import importlib
from typing import TYPE_CHECKING, Any

from ._resume import resume
from .backends.base import Algorithm, Capabilities, SolveOptions
from .cache import enable_compilation_cache
from .data import DataLoader
from .ensemble import EnsembleProblem, EnsembleSolution
from .errors import InvalidProblemError, ObjectiveError, OptiframeError, UnsupportedFeatureError
from .family import ProblemFamily
from .history import History, Run, read_history
from .problem import MaxSense, MinSense, ObjSense, OptimizationFunction, OptimizationProblem, remake
from .progress import ProgressBar
from .solution import OptimizationSolution, OptimizationState, ReturnCode, Stats
from .solve import solve

if TYPE_CHECKING:  # the backends, for readers and tools; imported on first use (below)
    from .backends.composite import MultiStart, PolyOpt
    from .backends.evosax import EvoSax, EvoSaxResult, EvoSaxState, EvoSaxStep
    from .backends.nevergrad import Nevergrad, NevergradResult, NevergradStep
    from .backends.ode import (
        GradientFlow,
        GradientFlowState,
        HighOrderDescent,
        ODEGradientDescent,
        RKAccelerated,
        RKChebyshevDescent,
    )
    from .backends.optax import Optax, OptaxState
    from .backends.optimistix import Optimistix, OptimistixState
    from .backends.scipy import (
        BFGS,
        CG,
        COBYLA,
        COBYQA,
        LBFGSB,
        SLSQP,
        TNC,
        Dogleg,
        NelderMead,
        NewtonCG,
        Powell,
        ScipyMinimize,
        TrustConstr,
        TrustExact,
        TrustKrylov,
        TrustNCG,
    )
    from .backends.scipy_global import (
        SHGO,
        BasinHopping,
        DifferentialEvolution,
        Direct,
        DualAnnealing,
    )
    from .backends.scipy_least_squares import ScipyLeastSquares
    from .learned import LearnedOptimizer
    from .meta import meta_train
    from .warm_start import WarmStart, fit_warm_start

# Each backend's public names, imported with their module when first used: `import
# optiframe` loads no backend (and so neither SciPy's optimizers nor optax).
_BACKEND_OF = {
    "MultiStart": "composite",
    "PolyOpt": "composite",
    "EvoSax": "evosax",
    "EvoSaxResult": "evosax",
    "EvoSaxState": "evosax",
    "EvoSaxStep": "evosax",
    "Nevergrad": "nevergrad",
    "NevergradResult": "nevergrad",
    "NevergradStep": "nevergrad",
    "GradientFlow": "ode",
    "GradientFlowState": "ode",
    "HighOrderDescent": "ode",
    "ODEGradientDescent": "ode",
    "RKAccelerated": "ode",
    "RKChebyshevDescent": "ode",
    "Optax": "optax",
    "OptaxState": "optax",
    "Optimistix": "optimistix",
    "OptimistixState": "optimistix",
    "BFGS": "scipy",
    "CG": "scipy",
    "COBYLA": "scipy",
    "COBYQA": "scipy",
    "LBFGSB": "scipy",
    "SLSQP": "scipy",
    "TNC": "scipy",
    "Dogleg": "scipy",
    "NelderMead": "scipy",
    "NewtonCG": "scipy",
    "Powell": "scipy",
    "ScipyMinimize": "scipy",
    "TrustConstr": "scipy",
    "TrustExact": "scipy",
    "TrustKrylov": "scipy",
    "TrustNCG": "scipy",
    "SHGO": "scipy_global",
    "BasinHopping": "scipy_global",
    "DifferentialEvolution": "scipy_global",
    "Direct": "scipy_global",
    "DualAnnealing": "scipy_global",
    "ScipyLeastSquares": "scipy_least_squares",
}
# Learning to optimize (optax, imported on first use too): name -> module.
_LEARNING_OF = {
    "LearnedOptimizer": "learned",
    "meta_train": "meta",
    "WarmStart": "warm_start",
    "fit_warm_start": "warm_start",
}


def __getattr__(name: str) -> Any:
    if name == "plot":  # matplotlib's plots of recorded runs, imported on first use
        value = globals()["plot"] = importlib.import_module(".plot", __name__)
        return value
    if name in _LEARNING_OF:
        module = importlib.import_module(f".{_LEARNING_OF[name]}", __name__)
    elif name in _BACKEND_OF:
        module = importlib.import_module(f".backends.{_BACKEND_OF[name]}", __name__)
    else:
        raise AttributeError(f"module 'optiframe' has no attribute {name!r}")
    value = globals()[name] = getattr(module, name)
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Algorithm",
    "BasinHopping",
    "BFGS",
    "Capabilities",
    "CG",
    "COBYLA",
    "COBYQA",
    "DataLoader",
    "DifferentialEvolution",
    "Direct",
    "Dogleg",
    "EnsembleProblem",
    "EnsembleSolution",
    "enable_compilation_cache",
    "DualAnnealing",
    "EvoSax",
    "EvoSaxResult",
    "EvoSaxState",
    "EvoSaxStep",
    "GradientFlow",
    "GradientFlowState",
    "fit_warm_start",
    "History",
    "HighOrderDescent",
    "InvalidProblemError",
    "LBFGSB",
    "LearnedOptimizer",
    "MaxSense",
    "meta_train",
    "MinSense",
    "MultiStart",
    "NelderMead",
    "Nevergrad",
    "NevergradResult",
    "NevergradStep",
    "NewtonCG",
    "ObjectiveError",
    "ObjSense",
    "ODEGradientDescent",
    "Optax",
    "OptaxState",
    "Optimistix",
    "OptimistixState",
    "OptiframeError",
    "OptimizationFunction",
    "OptimizationProblem",
    "OptimizationSolution",
    "OptimizationState",
    "plot",
    "PolyOpt",
    "ProblemFamily",
    "Powell",
    "ProgressBar",
    "read_history",
    "remake",
    "resume",
    "ReturnCode",
    "Run",
    "RKAccelerated",
    "RKChebyshevDescent",
    "ScipyLeastSquares",
    "ScipyMinimize",
    "SHGO",
    "SLSQP",
    "solve",
    "SolveOptions",
    "Stats",
    "TNC",
    "TrustConstr",
    "TrustExact",
    "TrustKrylov",
    "TrustNCG",
    "UnsupportedFeatureError",
    "WarmStart",
]

__version__ = "0.1.0"
