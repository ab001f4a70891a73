"""nnxopt: L-BFGS and every line-search optimizer of Optax, first-class in Flax NNX."""

from ._lbfgs import LbfgsInfo as LbfgsInfo
from ._lbfgs import LbfgsState as LbfgsState
from ._lbfgs import lbfgs as lbfgs
from ._optimizer import ModelAndOptimizer as ModelAndOptimizer
from ._optimizer import Optimizer as Optimizer
from ._status import Status as Status

__version__ = "0.1.0.dev0"
