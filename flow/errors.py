"""The flow package's one user-facing error."""


class FlowError(Exception):
    """Bad input to the flow stage: a missing or broken video, store or file, or a wrong value.

    The message names the file, video or key and says what is wrong.
    """


def shown(text: object) -> str:
    """`text` (a path, a message) as printable UTF-8: bytes of a non-UTF-8 file name (which Python
    carries as lone surrogates) become `\\xNN`, so that printing it or writing it to a UTF-8 file
    cannot fail."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
