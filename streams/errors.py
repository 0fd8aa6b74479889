"""The one exception of the streams package for user-facing mistakes."""
from p3dbase.errors import P3DError


class StreamsError(P3DError):
    """Bad input to a streams function: a missing store or video, a bad checkpoint, a diverged run.

    The message names the file, video or key and what is wrong; the CLI prints it without a traceback.
    """
