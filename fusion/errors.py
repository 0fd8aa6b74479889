"""The one exception the evaluation stage raises for user-facing mistakes."""
from p3dbase.errors import P3DError


class FusionError(P3DError):
    """Bad or missing input to `make eval`; the message names the file or video and what to run."""
