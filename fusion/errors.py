"""The one exception the evaluation stage raises for user-facing mistakes."""


class FusionError(Exception):
    """Bad or missing input to `make eval`; the message names the file or video and what to run."""
