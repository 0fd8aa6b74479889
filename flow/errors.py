"""The flow package's one user-facing error."""
from p3dbase.errors import P3DError


class FlowError(P3DError):
    """Bad input to the flow stage: a missing or broken video, store or file, or a wrong value.

    The message names the file, video or key and says what is wrong.
    """
