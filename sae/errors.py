"""The one exception type for problems a user can fix: bad input, missing files, wrong settings.

The command-line entry points print it as a single line and exit non-zero, without a traceback;
anything else that escapes is a bug and keeps its traceback.
"""


class AtlasError(Exception):
    """A user-facing error whose message names the file, field or value at fault."""
