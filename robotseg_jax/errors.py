"""The base type of the errors a user can fix: a missing or unreadable file, a checkpoint of another model, an
unknown model, category or config field, a bad prompt or argument.

Every such error in the package subclasses `UserError` (beside `ValueError` or `FileNotFoundError`, so that
`except ValueError` keeps working) and carries a message that names the culprit and what to do. The command lines
(`robotseg_jax.cli`) report exactly these as one message on stderr with exit status 2; any other exception is a
bug and keeps its traceback. This module imports only the standard library, so modeling and data code can use it
without the CLI.
"""

from __future__ import annotations

import os


class UserError(Exception):
    """An error the user can fix; its message names the culprit (file, key, model, category, argument)."""


class ConfigValueError(UserError, ValueError):
    """A config value that cannot work: a key its section has no field for, a batch size the devices do not
    divide, a mesh that does not cover the devices."""


class OutputDirError(UserError, OSError):
    """An output folder that cannot be created (a file in the way, no permission, a read-only disk)."""


def make_output_dir(path: str | os.PathLike, what: str = "output folder") -> str:
    """`os.makedirs(path, exist_ok=True)`, raising OutputDirError (naming `what` and the path) when that fails;
    returns `path`."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise OutputDirError(f"cannot create the {what} {os.fspath(path)}: {err.strerror or err}") from err
    return os.fspath(path)
