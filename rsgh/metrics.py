"""``rsgh.metrics`` as before the package was layered: the metrics live in :mod:`rsgh.eval.metrics`."""

from .eval.metrics import *  # noqa: F401,F403
from .eval.metrics import mean_average_precision, pack_codes, retrieval_summary  # noqa: F401
