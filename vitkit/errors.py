"""User-facing errors: the CLI prints these as one line (no traceback unless --debug) and exits with code 2."""


class UserError(ValueError):
    """Bad input from the user: a flag, a file, a dataset, a checkpoint. The message names the thing and what
    was expected, in one line."""
