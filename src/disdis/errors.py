"""User-facing errors.

Anything a user can cause (a missing file, a bad key, a wrong shape) raises
:class:`DisdisError` with one line that names the culprit and what was
expected. The command line prints that line and exits with status 2 instead of
showing a traceback.
"""


class DisdisError(Exception):
    """An error caused by the user's input, reported as one line, exit status 2."""


class ConfigError(DisdisError):
    """A configuration key or value that the schema does not accept."""


class DataError(DisdisError):
    """A dataset file or folder that is missing or not in the expected format."""
