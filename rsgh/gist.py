"""``rsgh.gist`` as before the package was layered: GIST lives in :mod:`rsgh.data.gist`."""

from .data.gist import *  # noqa: F401,F403
from .data.gist import GistParams, gist  # noqa: F401
