"""Line searches as optax transforms that report a status.

Each factory returns an ``optax.GradientTransformationExtraArgs`` that scales
the direction it is given (the ``updates``) and drops into
``optax.lbfgs(linesearch=...)`` or ``optax.chain(optax.sgd(1.0), ...)``.
Their ``update`` takes ``updates, state, params`` and the keywords ``value``,
``grad`` (at ``params``) and ``value_fn`` (and ``aux`` with ``has_aux``); the
new state holds the value, gradient and aux at the accepted point. Arguments
are checked when the search is built: ``TypeError`` for a wrong type,
``ValueError`` for a value out of range.

Example:
    A search passed to ``nnxopt.lbfgs`` (or ``nnxopt.bfgs``), whose state
    then holds the search's:

    >>> import jax.numpy as jnp, nnxopt
    >>> from nnxopt import linesearch
    >>> tx = nnxopt.lbfgs(linesearch=linesearch.hager_zhang())
    >>> type(tx.init(jnp.zeros(3)).linesearch_state).__name__
    'HagerZhangState'
"""

from .._status import SEARCH_MESSAGES as SEARCH_MESSAGES
from .._status import SearchStatus as SearchStatus
from ._common import LineSearchInfo as LineSearchInfo
from .backtracking import BacktrackingState as BacktrackingState
from .backtracking import backtracking as backtracking
from .hager_zhang import HagerZhangState as HagerZhangState
from .hager_zhang import hager_zhang as hager_zhang
from .more_thuente import MoreThuenteState as MoreThuenteState
from .more_thuente import more_thuente as more_thuente
from .zoom import ZoomState as ZoomState
from .zoom import zoom as zoom
