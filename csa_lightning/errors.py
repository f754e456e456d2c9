"""The one error contract of every command: a usage error is one line, ``error: <what>; <fix>``, and exit 2.

Library code raises [`UsageError`][csa_lightning.errors.UsageError] when the input is at fault (a bad
argument, a missing or corrupt file, a config that cannot build); every entry point (``cli.py`` and
each ``python -m csa_lightning.*`` tool) is wrapped in
[`command`][csa_lightning.errors.command], which prints it as one line and exits with status 2.
``--help`` exits 0. ``CSA_LIGHTNING_TRACEBACK=1`` re-raises instead, with the traceback.

[`ToolParser`][csa_lightning.errors.ToolParser] is the argparse parser of every tool: its errors are
usage errors too, an option that takes one value refuses being given twice (argparse would keep the
last one without a word), and a list option (`list_option`) adds up over repeats and refuses an item
listed twice. Imports nothing from the package, so every layer can use it.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any, Callable, List, NoReturn, Optional, Sequence, TypeVar

__all__ = ["UsageError", "first_line", "describe", "command", "ToolParser", "list_option", "positive_int",
           "int_in", "non_empty"]  # fmt: skip

F = TypeVar("F", bound=Callable[..., Any])


class UsageError(ValueError):
    """The input is at fault: the message names the problem and the fix, on one line.

    A subclass of ValueError, so code that catches ValueError around a constructor keeps working.
    """


def first_line(err: BaseException) -> str:
    """An error's message as one line: its first non-empty line, without terminal colours (the ONNX
    exporter colours its messages), else the exception's type name."""
    import re

    for line in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines():
        if line.strip():
            return " ".join(line.split())
    return type(err).__name__


def describe(err: BaseException, limit: int = 200) -> str:
    """``TypeName: first line`` of an error (its first line cut at ``limit`` characters)."""
    return f"{type(err).__name__}: {first_line(err)[:limit]}"


def command(main: F) -> F:
    """Wrap a command's ``main(argv)``: a `UsageError` becomes ``error: ...`` on stderr and exit 2."""

    @functools.wraps(main)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except UsageError as err:
            if os.environ.get("CSA_LIGHTNING_TRACEBACK"):
                raise
            print(f"error: {first_line(err)}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return run  # type: ignore[return-value]


class _StoreOnce(argparse._StoreAction):
    """argparse's ``store``, refusing a second value for the same option."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: D102
        given = getattr(parser, "_given", None)
        if given is not None:
            if self.dest in given and self.option_strings:
                raise UsageError(f"{option_string} is given twice ({given[self.dest]}, then {values}); give it once")
            given[self.dest] = values
        super().__call__(parser, namespace, values, option_string)


class _ListOption(argparse.Action):
    """A comma-separated list that adds up over repeats (``--seeds 0,1 --seeds 2`` is 0, 1, 2)."""

    def __init__(self, *args, item_type: Callable[[str], Any] = str, **kwargs) -> None:
        self.item_type = item_type
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: D102
        current = list(getattr(namespace, self.dest, None) or [])
        if self.dest not in getattr(parser, "_listed", set()):
            current = []  # the first time on this command line: replaces the default
            getattr(parser, "_listed", set()).add(self.dest)
        name = option_string or self.dest
        items = [item.strip() for item in str(values).split(",")]
        if not any(items):
            raise UsageError(f"{name} is empty; give at least one value, e.g. {name} {self.metavar or 'A,B'}")
        for text in items:
            if not text:
                raise UsageError(f"{name} {values!r} has an empty item; separate values with single commas")
            try:
                item = self.item_type(text)
            except (TypeError, ValueError) as err:
                raise UsageError(f"{name}: {first_line(err)}") from None
            if item in current:
                raise UsageError(f"{name} lists {text} twice; give each value once")
            current.append(item)
        setattr(namespace, self.dest, current)


def list_option(parser: argparse.ArgumentParser, *flags: str, item_type: Callable[[str], Any] = str,
                default: Optional[Sequence[Any]] = None, **kwargs: Any) -> argparse.Action:  # fmt: skip
    """Add a comma-separated list option to ``parser``; repeats add up, an item listed twice is refused."""
    return parser.add_argument(
        *flags, action=_ListOption, item_type=item_type, default=list(default) if default else default, **kwargs
    )


class ToolParser(argparse.ArgumentParser):
    """argparse for the tools: errors raise `UsageError` (one line naming ``--help``), a
    single-value option given twice is refused, and a value that looks like an option
    (``--seeds -1,0``) is read as the value of the option before it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def error(self, message: str) -> NoReturn:
        """argparse's error: a `UsageError` naming ``--help`` (the command wrapper prints it, exit 2)."""
        raise UsageError(f"{message} ({self.prog} --help lists every option)")

    def parse_args(self, args: Optional[Sequence[str]] = None, namespace: Any = None) -> Any:  # type: ignore[override]
        """argparse's; with ``CSA_PARSE_ONLY`` set, stop here (`csa_lightning.run_switches`)."""
        from .run_switches import stop_after_parsing

        parsed = super().parse_args(args, namespace)
        stop_after_parsing(self.prog)
        return parsed

    def parse_known_args(self, args: Optional[Sequence[str]] = None, namespace: Any = None) -> Any:  # type: ignore[override]
        """argparse's, remembering which options this command line gave (to refuse one given twice)."""
        self._given: dict = {}
        self._listed: set = set()
        args = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self._join_dashed_values(args), namespace)

    def _join_dashed_values(self, args: List[str]) -> List[str]:
        takes_value = {
            flag
            for action in self._actions
            if action.nargs is None and not isinstance(action, argparse._SubParsersAction)
            and action.option_strings and not isinstance(action, (argparse._StoreConstAction, argparse._HelpAction))
            for flag in action.option_strings
        }  # fmt: skip
        joined: List[str] = []
        i = 0
        while i < len(args):
            token = args[i]
            if token == "--":
                joined.extend(args[i:])
                break
            following = args[i + 1] if i + 1 < len(args) else None
            if (token in takes_value and following is not None and following.startswith("-") and following != "--"
                    and following.split("=")[0] not in self._option_string_actions):  # fmt: skip
                joined.append(f"{token}={following}")
                i += 2
                continue
            joined.append(token)
            i += 1
        return joined


def positive_int(text: str) -> int:
    """An argparse ``type``: an integer >= 1."""
    return int_in(1, None)(text)


def int_in(low: int, high: Optional[int]) -> Callable[[str], int]:
    """An argparse ``type``: an integer from ``low`` to ``high`` (None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            rule = f"from {low} to {high}" if high is not None else ("a positive integer" if low == 1 else f">= {low}")
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def non_empty(text: str) -> str:
    """An argparse ``type``: a string with something in it."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text
