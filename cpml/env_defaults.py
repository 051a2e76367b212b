"""Every command's flags also read the environment: --foo-bar from PREFIX_FOO_BAR (e.g. CPML_WORKER_LISTEN)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping


def parse_bool(text: str) -> bool:
    """true/false, yes/no, on/off, 1/0 (case-insensitive; empty is false), as flags and variables spell them."""
    if str(text).lower() in ("1", "true", "yes", "on"):
        return True
    if str(text).lower() in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"true or false, not {text!r}")


def variable(prefix: str, option: str) -> str:
    """The environment variable of a flag: ("CPML_WORKER_", "--share-bytes-cap") -> CPML_WORKER_SHARE_BYTES_CAP."""
    return prefix + option.lstrip("-").replace("-", "_").upper()


def apply_env_defaults(parser: argparse.ArgumentParser, prefix: str, environ: Mapping[str, str]) -> None:
    """Take each flag's default from its variable when set (a flag on the command line still wins)."""
    for action in parser._actions:  # argparse keeps no public list of a parser's actions
        long = [o for o in action.option_strings if o.startswith("--")]
        if not long or isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        value = environ.get(variable(prefix, long[0]))
        if value is None:
            continue
        if action.nargs == 0:  # store_true / store_false: the variable says whether the flag is given
            try:
                given = parse_bool(value)
            except argparse.ArgumentTypeError as exc:
                parser.error(f"{variable(prefix, long[0])}: {exc}")
            action.default = not given if isinstance(action, argparse._StoreFalseAction) else given
        else:
            action.default = value  # a string: argparse converts it with the flag's type, as if typed
        action.required = False
