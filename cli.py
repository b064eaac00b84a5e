"""What the command-line scripts share: flags generated from a dataclass, and one-line errors with exit code 2.

`fun/` raises plain exceptions (ValueError, FileNotFoundError, fun.hub.HubError) that name the file or value at
fault; the scripts (train.py, evaluate.py, fisher.py, prefetch.py, experiments/) say which flag to change:

    with blame("--train-file"):
        split = task.split("train", tokenizer, cfg.max_length, cfg.train_file)

turns a ValueError into `error: --train-file: <what was wrong>` on stderr and exit code 2 (`main`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from contextlib import contextmanager
from typing import Callable, Iterator


class UsageError(Exception):
    """Bad input from the user: `main` prints the message alone, on one line, and exits with code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad flag reported like every other bad input: one `error:` line, exit code 2."""

    def error(self, message: str):
        raise UsageError(message.removeprefix("argument "))


def main(run: Callable[[], int]) -> int:
    """Run a script's body; a UsageError becomes `error: <message>` and exit code 2."""
    try:
        return run()
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


@contextmanager
def blame(flag: str) -> Iterator[None]:
    """Report what fun/ raises inside the block as a problem with `flag` (ValueError, OSError: missing files,
    Hub errors). Anything else is a bug and keeps its traceback."""
    try:
        yield
    except (ValueError, OSError) as err:
        raise UsageError(f"{flag}: {err}") from None


@contextmanager
def blame_config() -> Iterator[None]:
    """A ConfigError (fun/config.py) names a config field: report it as that field's flag."""
    from fun.config import ConfigError
    try:
        yield
    except ConfigError as err:
        raise UsageError(f"{flag(err.field)}: {err}") from None


def flag(field: str) -> str:
    """The command-line spelling of a config field: batch_size → --batch-size."""
    return "--" + field.replace("_", "-")


def positive_int(text: str) -> int:
    """argparse type: a whole number > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value}: must be a positive integer")
    return value


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated whole numbers, e.g. 10,1,0."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 10,1,0") from None


def str_list(text: str) -> list[str]:
    """argparse type: comma-separated names, e.g. sentence1,sentence2."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated names, e.g. sentence1,sentence2")
    return items


PARSERS = {"int_list": int_list, "str_list": str_list}


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of `cls` (`batch_size` → `--batch-size`), typed from its annotation, with the field's
    one-line doc as help. Defaults are left out of the namespace (argparse.SUPPRESS), so the caller sees exactly
    what was given and the dataclass keeps the defaults. Field metadata: help, group (opens a --help section),
    choices, required, positive (→ positive_int), parse (a PARSERS name)."""
    hints = typing.get_type_hints(cls)
    group = parser
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("group"):
            group = parser.add_argument_group(meta["group"])
        kind = next((t for t in typing.get_args(hints[f.name]) if t is not type(None)), hints[f.name])
        kwargs = dict(help=meta["help"].replace("%", "%%"), default=argparse.SUPPRESS)
        if kind is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = PARSERS[meta["parse"]] if "parse" in meta else positive_int if meta.get("positive") \
                else kind
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
            else:
                kwargs["metavar"] = f.name.upper()
            if f.default is not None and f.default is not dataclasses.MISSING:
                kwargs["help"] += f" (default: {f.default})"
        if meta.get("required"):
            kwargs["required"] = True
        group.add_argument(flag(f.name), **kwargs)
