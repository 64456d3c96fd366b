"""optiframe: describe an optimisation problem once, solve it with optax, SciPy,
Nevergrad and more by changing one argument."""

from .backends.base import Algorithm, Capabilities, SolveOptions
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
from .backends.scipy_global import SHGO, BasinHopping, DifferentialEvolution, Direct, DualAnnealing
from .backends.scipy_least_squares import ScipyLeastSquares
from .data import DataLoader
from .ensemble import EnsembleProblem, EnsembleSolution
from .errors import InvalidProblemError, ObjectiveError, OptiframeError, UnsupportedFeatureError
from .problem import MaxSense, MinSense, ObjSense, OptimizationFunction, OptimizationProblem, remake
from .progress import ProgressBar
from .solution import OptimizationSolution, OptimizationState, ReturnCode, Stats
from .solve import solve

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
    "DualAnnealing",
    "EvoSax",
    "EvoSaxResult",
    "EvoSaxState",
    "EvoSaxStep",
    "GradientFlow",
    "GradientFlowState",
    "HighOrderDescent",
    "InvalidProblemError",
    "LBFGSB",
    "MaxSense",
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
    "PolyOpt",
    "Powell",
    "ProgressBar",
    "remake",
    "ReturnCode",
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
]

__version__ = "0.1.0"
