"""The commands' arguments: flags and ``key=value`` overrides of ``configs/pipeline.yaml``, in any
order (``--stages 2 3 data.root=DIR --cpu``).

Every command (the pipeline, ``demo``, ``app``) declares its flags with :mod:`argparse` and a
positional ``overrides`` (:func:`add_overrides_argument`), and parses with
:func:`parse_with_overrides`. A ``key=value`` word is an override wherever it stands, also after a
flag that takes several values (``--gids 0 1 data.root=DIR``), except as the value of a flag that
takes one (``--text "a=b"`` is a sentence). Some flags are short for an override
(``--name RUN``: ``name=RUN``); the command names them and they are added after the others. A
positional word that is not ``key=value`` is the command's to refuse (demo, app) or to pass on.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from referdino_plus.config import PipelineConfig

logger = logging.getLogger(__name__)

OVERRIDES_HELP = "overrides of configs/pipeline.yaml"


def add_overrides_argument(parser: argparse.ArgumentParser) -> None:
    """The positional ``overrides`` (``key=value ...``) that :func:`parse_with_overrides` fills."""
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)


def is_override(word: str) -> bool:
    """Whether a command-line word is a ``key=value`` override (not a flag, ``--flag=value``)."""
    return "=" in word and not word.startswith("-")


def parse_with_overrides(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    *,
    flag_overrides: Mapping[str, str] | None = None,
    stray: Callable[[str], Exception] | None = None,
) -> argparse.Namespace:
    """Parse ``argv``: flags and ``key=value`` overrides in any order.

    Args:
        parser: the command's flags and the positional ``overrides`` (:func:`add_overrides_argument`).
        argv: the command line after the command's name.
        flag_overrides: ``{flag's dest: config key}`` of the flags that are short for an override:
            a given flag adds ``key=value`` (``key=true`` for a switch).
        stray: the error to raise for a positional word that is not ``key=value`` (given that
            word); ``None``: such words are overrides too (hydra reads ``~key``).
    Returns:
        the flags' values; ``overrides``: the positional words that are not ``key=value``, then
        the ``key=value`` words in their order, then those of ``flag_overrides``.
    """
    options, one_value = _options(parser)
    flags, overrides = [], []
    value_of_flag = False
    for word in argv:
        if not value_of_flag and is_override(word):
            overrides.append(word)
        else:
            flags.append(word)
        value_of_flag = not value_of_flag and _spelled_flag(word, options) in one_value
    args = parser.parse_intermixed_args(flags)
    if stray is not None and args.overrides:
        raise stray(args.overrides[0])
    args.overrides = [*args.overrides, *overrides]
    for dest, key in (flag_overrides or {}).items():
        value = getattr(args, dest)
        if value is None or value is False:
            continue
        args.overrides.append(f"{key}={'true' if value is True else value}")
    return args


def _options(parser: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """``(every option string, those whose flag takes exactly one value)`` of ``parser``."""
    # argparse lists its options only in ``_actions``: it has no public accessor.
    actions = [action for action in parser._actions if action.option_strings]
    every = {option for action in actions for option in action.option_strings}
    one_value = {option for a in actions if a.nargs is None for option in a.option_strings}
    return every, one_value


def _spelled_flag(word: str, options: set[str]) -> str | None:
    """The option that ``word`` spells as argparse reads it (the whole name, or a unique prefix of
    a long name); ``None`` for anything else, also ``--flag=value`` (its value is in it)."""
    if not word.startswith("-") or "=" in word:
        return None
    if word in options:
        return word
    if not word.startswith("--"):
        return None
    matches = [option for option in options if option.startswith(word)]
    return matches[0] if len(matches) == 1 else None


def command_config(overrides: Sequence[str]) -> PipelineConfig | None:
    """The configuration a command's ``key=value`` overrides compose
    (:func:`referdino_plus.config.load_config`), or ``None`` once the reason is logged in one
    line (the command then exits with status 2)."""
    from referdino_plus.config import ConfigError, load_config

    try:
        return load_config(overrides)
    except ConfigError as err:
        logger.error("%s", err)
        return None
