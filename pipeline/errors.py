"""The pipeline package's user-facing errors; the CLI prints them as one line and exits with 2."""
from p3dbase.errors import P3DError


class PipelineError(P3DError):
    """Bad input to a pipeline stage; the message names the file, line, video or key and what is wrong."""


class ConfigError(PipelineError):
    """A bad config file, key or value."""


class DatasetError(PipelineError):
    """A missing dataset root, or an annotation file that cannot be read as its format."""
