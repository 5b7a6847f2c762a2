"""The one entry point of every command line: a user error ends the command with one message and exit status 2.

    if __name__ == "__main__":
        cli.run(main)                    # argparse CLIs: main(argv) returns the exit status (None = 0)
        cli.run(main, absl_flags=True)   # absl CLIs with ml_collections config flags (train, evaluate)

A `robotseg_jax.errors.UserError` raised by `main` (a missing or unreadable file, a checkpoint of another model, an
unknown model or category, a bad config value or prompt) is printed as `<prog>: error: <message>` on stderr, and
the process exits with status 2, as argparse does for its own usage errors. With `absl_flags`, so are absl's flag
errors (unknown flag, value of the wrong type, missing required flag), absl's `app.UsageError`, a config file that
cannot be loaded and a config override of a field the config lacks (`--config.data.batch_sise=3`, which
ml_collections reports as an AttributeError or KeyError from inside flag parsing).

Anything else is a bug and raises as usual, traceback included. Setting the environment variable
`ROBOTSEG_TRACEBACK=1` makes user errors raise too, to see where they came from.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from robotseg_jax.errors import UserError

TRACEBACK_ENV = "ROBOTSEG_TRACEBACK"
USER_ERROR_STATUS = 2


def show_traceback() -> bool:
    """Whether `ROBOTSEG_TRACEBACK` asks for tracebacks of user errors (set, and not 0/false/no)."""
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false", "no")


def run(main: Callable[..., Any], argv: Sequence[str] | None = None, *, absl_flags: bool = False) -> NoReturn:
    """Runs `main` as a command line and exits: with main's status, or with status 2 after printing a user error.

    `argv` (without the program name for argparse, with it for absl) defaults to the command line. With
    `absl_flags`, `main` is run by `absl.app.run`, and flag parsing reports its user errors the same way."""
    prog = _prog(main)
    if absl_flags:
        from absl import app

        app.run(_absl_main(main, prog), argv=None if argv is None else list(argv), flags_parser=_absl_parser(prog))
        sys.exit(0)  # not reached: app.run exits itself
    try:
        status = main(None if argv is None else list(argv))
    except UserError as err:
        fail(prog, str(err), err)
    sys.exit(0 if status is None else status)


def fail(prog: str, message: str, error: BaseException | None = None) -> NoReturn:
    """Prints `<prog>: error: <message>` on stderr and exits with status 2; re-raises `error` instead when
    `ROBOTSEG_TRACEBACK` is set."""
    if error is not None and show_traceback():
        raise error
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(USER_ERROR_STATUS)


def _prog(main: Callable[..., Any]) -> str:
    """`python -m robotseg_jax.<module>` of the module that defines `main` (as the user typed it)."""
    module = getattr(main, "__module__", None)
    if module in (None, "__main__"):
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = spec.name if spec is not None else None
    if not module:
        return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "robotseg_jax"
    return f"python -m {module.removesuffix('.__main__')}"


# --------------------------------------------------------------------------------------------------------- absl
def _absl_main(main: Callable[[list[str]], Any], prog: str) -> Callable[[list[str]], Any]:
    from absl import app

    def wrapped(argv: list[str]):
        try:
            return main(argv)
        except (UserError, app.UsageError) as err:
            fail(prog, str(err), err)

    return wrapped


def _absl_parser(prog: str) -> Callable[[list[str]], list[str]]:
    """absl's flag parsing, with its errors and those of config files and overrides reported as user errors."""
    from absl import flags

    def parse(argv: list[str]) -> list[str]:
        try:
            remaining = flags.FLAGS(argv)
        except flags.Error as err:  # unknown flag, bad value, missing required flag, override order
            fail(prog, _without_traceback(str(err)), err)
        except (AttributeError, KeyError, IndexError, OSError, TypeError, ValueError) as err:
            # ml_collections raises these from inside parsing for an override of a field the config lacks, or a
            # config file it cannot read; anything that is neither is re-raised as a bug.
            problem = _config_problem(argv)
            if problem is None:
                raise
            fail(prog, problem, err)
        for name, flag in _config_file_flags():
            error = _load_error(flag.value)
            if error is not None:  # ml_collections defers a missing config file to the first use of the config
                fail(prog, _config_problem(argv) or f"--{name}: {error}", error)
        return remaining

    return parse


def _config_file_flags():
    from absl import flags
    from ml_collections.config_flags.config_flags import ConfigFileFlagParser

    for name in list(flags.FLAGS):
        flag = flags.FLAGS[name]
        if isinstance(flag.parser, ConfigFileFlagParser):
            yield name, flag


def _load_error(value: Any) -> OSError | None:
    """The error of a config that ml_collections could not load (it stands in an object that raises it on any
    use), else None."""
    from ml_collections import config_dict

    if value is None or isinstance(value, (config_dict.ConfigDict, config_dict.FrozenConfigDict)):
        return None
    try:
        getattr(value, "keys")
    except OSError as err:
        return err
    return None


def _config_problem(argv: Sequence[str]) -> str | None:
    """What is wrong with a config flag on the command line: its file cannot be read, or an override names a field
    the config lacks. None when neither (then the error is not the user's)."""
    for name, flag in _config_file_flags():
        argument = _flag_argument(argv, name)
        if argument is None:
            continue
        path = argument.split(":", 1)[0]
        if not os.path.exists(path):
            return f"--{name}: no config file at {path}"
        if not os.path.isfile(path):
            return f"--{name}: {path} is not a config file"
        try:
            config = flag.parser.parse(argument)
        except Exception:  # noqa: BLE001 -- the config itself fails: not an override problem, report the original
            return None
        load_error = _load_error(config)
        if load_error is not None:
            return f"--{name}: cannot read the config file {path}: {load_error}"
        for override in _overrides(argv, name):
            problem = _missing_field(config, override)
            if problem is not None:
                return f"--{name}.{override}: {problem}"
    return None


def _flag_argument(argv: Sequence[str], name: str) -> str | None:
    """The value of `--name=value` / `--name value` (the last one given), or None."""
    value = None
    for i, arg in enumerate(argv[1:], 1):
        match = re.fullmatch(rf"--?{re.escape(name)}(=(.*))?", arg, re.DOTALL)
        if match:
            value = match.group(2) if match.group(1) else (argv[i + 1] if i + 1 < len(argv) else None)
    return value


def _overrides(argv: Sequence[str], name: str) -> list[str]:
    """The field paths of the `--name.a.b=value` overrides, in order."""
    paths = []
    for arg in argv[1:]:
        match = re.match(rf"--?(?:no)?{re.escape(name)}\.([^=\s]+)", arg)
        if match:
            paths.append(match.group(1))
    return paths


def _missing_field(config: Any, path: str) -> str | None:
    """Why `path` (`a.b.c`) names no field of `config`, or None when it does (or cannot be judged)."""
    from ml_collections import config_dict

    node, walked = config, []
    for part in path.split("."):
        if "[" in part:  # indexing into a list or tuple: leave it to ml_collections
            return None
        where = ".".join(walked) or "the config"
        if not isinstance(node, (config_dict.ConfigDict, config_dict.FrozenConfigDict)):
            return f"{where} is {node!r}, not a config section, so it has no field {part!r}"
        if part not in node:
            keys = sorted(str(k) for k in node.keys())
            close = difflib.get_close_matches(part, keys, 1, 0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"its fields are {', '.join(keys)}"
            return f"{where} has no field {part!r}; {hint}"
        node = node[part]
        walked.append(part)
    return None


def _without_traceback(message: str) -> str:
    """absl's message for a config file whose get_config raised embeds the traceback; keeps its last line."""
    marker = "Traceback (most recent call last):"
    if marker not in message:
        return message
    head = message.split(marker, 1)[0].strip().rstrip(":")
    last = [line for line in message.splitlines() if line.strip()][-1].strip()
    return f"{head}: {last}"
