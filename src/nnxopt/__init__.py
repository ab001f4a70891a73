"""nnxopt: L-BFGS and every line-search optimizer of Optax, first-class in Flax NNX."""

from . import linesearch as linesearch
from ._bfgs import BfgsInfo as BfgsInfo
from ._bfgs import BfgsState as BfgsState
from ._bfgs import bfgs as bfgs
from ._chunked import chunked as chunked
from ._handoff import HandoffResult as HandoffResult
from ._handoff import adam_then_lbfgs as adam_then_lbfgs
from ._implicit import ImplicitDiff as ImplicitDiff
from ._implicit import ImplicitDiffWarning as ImplicitDiffWarning
from ._lbfgs import LbfgsInfo as LbfgsInfo
from ._lbfgs import LbfgsState as LbfgsState
from ._lbfgs import lbfgs as lbfgs
from ._lbfgsb import LbfgsbInfo as LbfgsbInfo
from ._lbfgsb import LbfgsbState as LbfgsbState
from ._lbfgsb import lbfgsb as lbfgsb
from ._minimize import MinimizeHistory as MinimizeHistory
from ._minimize import MinimizeInfo as MinimizeInfo
from ._minimize import MinimizeResult as MinimizeResult
from ._minimize import default_tols as default_tols
from ._minimize import minimize as minimize
from ._objective import model_fn as model_fn
from ._objective import state_fn as state_fn
from ._optimizer import ModelAndOptimizer as ModelAndOptimizer
from ._optimizer import Optimizer as Optimizer
from ._solve import Solution as Solution
from ._solve import solve as solve
from ._solver import BestPoint as BestPoint
from ._solver import Solver as Solver
from ._solver import SolverState as SolverState
from ._status import Status as Status

__version__ = "0.1.0.dev0"
