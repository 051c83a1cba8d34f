"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class MathtuneError(Exception):
    """Bad input from the user: a config key, a file, a path. Never a bug in mathtune."""
