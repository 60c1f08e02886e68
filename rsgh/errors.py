"""Failures that the user can fix and that are not a bad value (``ValueError``) or a missing file
(``FileNotFoundError``): the command line prints each as one line, without a traceback."""


class UserError(Exception):
    """A failure the user can act on; its message says what and how."""


class BusyError(UserError):
    """Another process holds the lock of a folder."""


class NotebookFailed(UserError):
    """A page of the book failed to execute or to build."""


class DivergedError(UserError):
    """A training whose losses became NaN or infinite (a step size too large for the problem)."""
