"""Every option of every training and data sub-command says what it does in ``--help``."""

from __future__ import annotations

import argparse

import pytest

from megasr.cli.main import build_parser


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (subparsers,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(subparsers.choices)


COMMANDS = [
    (group, action)
    for group in ("train", "data")
    for action in _actions(_actions(build_parser())[group])
]


@pytest.mark.parametrize(("group", "action"), COMMANDS, ids=[f"{g} {a}" for g, a in COMMANDS])
def test_every_option_has_help(group, action):
    parser = _actions(_actions(build_parser())[group])[action]
    options = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    assert options, f"{group} {action} has no options"
    silent = [
        "/".join(a.option_strings) or a.dest
        for a in options
        if not a.help or a.help == argparse.SUPPRESS or not a.help.strip()
    ]
    assert not silent, f"megasr {group} {action}: no help for {silent}"


def test_the_training_commands_are_all_checked():
    assert {("train", "pgft-extractor"), ("train", "pgft-eval"), ("train", "pgft-clip"),
            ("train", "fetch-base"), ("train", "megasr"), ("data", "prepare"),
            ("data", "verify")} <= set(COMMANDS)  # fmt: skip
