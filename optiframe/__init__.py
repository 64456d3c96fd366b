"""optiframe: describe an optimisation problem once, solve it with optax, SciPy,
Nevergrad and more by changing one argument."""

from .backends.base import Algorithm, Capabilities, SolveOptions
from .backends.composite import MultiStart, PolyOpt
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
    ScipyLeastSquares,
)
from .data import DataLoader
from .errors import InvalidProblemError, ObjectiveError, OptiframeError, UnsupportedFeatureError
from .problem import MaxSense, MinSense, ObjSense, OptimizationFunction, OptimizationProblem, remake
from .progress import ProgressBar
from .solution import OptimizationSolution, OptimizationState, ReturnCode, Stats
from .solve import solve

__all__ = [
    "BasinHopping",
    "DifferentialEvolution",
    "Direct",
    "DualAnnealing",
    "MultiStart",
    "PolyOpt",
    "SHGO",
    "ScipyLeastSquares",
    "BFGS",
    "CG",
    "COBYLA",
    "COBYQA",
    "Dogleg",
    "LBFGSB",
    "NelderMead",
    "NewtonCG",
    "Powell",
    "SLSQP",
    "ScipyMinimize",
    "TNC",
    "TrustConstr",
    "TrustExact",
    "TrustKrylov",
    "TrustNCG",
    "Algorithm",
    "Capabilities",
    "DataLoader",
    "GradientFlow",
    "GradientFlowState",
    "HighOrderDescent",
    "InvalidProblemError",
    "MaxSense",
    "MinSense",
    "Nevergrad",
    "NevergradResult",
    "NevergradStep",
    "ODEGradientDescent",
    "ObjSense",
    "ObjectiveError",
    "OptimizationFunction",
    "OptimizationProblem",
    "OptimizationSolution",
    "OptimizationState",
    "Optax",
    "OptaxState",
    "OptiframeError",
    "ProgressBar",
    "RKAccelerated",
    "RKChebyshevDescent",
    "ReturnCode",
    "SolveOptions",
    "Stats",
    "UnsupportedFeatureError",
    "remake",
    "solve",
]

__version__ = "0.1.0"
