"""The flow package's one user-facing error."""


class FlowError(Exception):
    """Bad input to the flow stage: a missing or broken video, store or file, or a wrong value.

    The message names the file, video or key and says what is wrong.
    """
