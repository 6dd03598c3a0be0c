"""The one exception type for a user's mistake.

Anything raised as `BertkitError` is a problem with the user's input (a file, a flag, a name),
not a bug: the CLI prints its message on one line and exits with status 2, no stack trace.
"""


class BertkitError(Exception):
    """A user-facing error whose message says what was wrong and where (file, line, field)."""
