"""User-facing errors: the CLI prints these as one line (no traceback unless --debug) and exits with code 2."""

from __future__ import annotations

import importlib
from types import ModuleType

# import name -> distribution name, where they differ
PIP_NAMES = {"sklearn": "scikit-learn", "PIL": "pillow"}


class UserError(ValueError):
    """Bad input from the user: a flag, a file, a dataset, a checkpoint. The message names the thing and what
    was expected, in one line."""


def distribution(module: str) -> str:
    """The pip package that provides `module` ("sklearn.linear_model" -> "scikit-learn")."""
    top = module.split(".")[0]
    return PIP_NAMES.get(top, top)


def missing_package_error(module: str, what: str = "this command") -> UserError:
    """A one-line UserError for an optional package that is not installed, naming the pip command."""
    return UserError(f"{what} needs the package {distribution(module)!r}, which is not installed: "
                     f"pip install {distribution(module)}")


def require(module: str, what: str = "this command") -> ModuleType:
    """Import `module` or raise `missing_package_error` (one line with the pip command, not a traceback).
    Call it where an optional package is first needed, before any long work starts."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.split(".")[0] != e.name.split(".")[0]:
            raise  # the package is there but one of its own dependencies is missing: show that
        raise missing_package_error(module, what) from None
