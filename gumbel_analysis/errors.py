"""The one exception type for bad input (a value, a path, a file's content).

The command line prints its message as one line on stderr and exits with status 2. It subclasses
ValueError so library users can catch either.
"""


class InputError(ValueError):
    """Bad input from the user: an out-of-range value, a missing or corrupt file."""


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss): the command prints one line and exits 1."""
