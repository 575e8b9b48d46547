"""The command synopsis in docs/usage.md shows the defaults the CLI really uses (argparse's, or for prune the
recipe's when the flag is left to the recipe): a literal value in `[--flag VALUE]` must equal that default."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRUNE_RECIPE_KEYS = {"method": "selection.method", "sparsity": "selection.sparsity", "nsamples": "calibration.nsamples",
                     "seq_len": "calibration.seq_len", "seed": "selection.seed", "multiple_of": "selection.multiple_of",
                     "batch_size": "calibration.batch_size", "dtype": "model.dtype", "device": "model.device",
                     "allocation": "selection.allocation"}


def _synopsis() -> dict[str, list[tuple[str, str]]]:
    text = (ROOT / "docs" / "usage.md").read_text()
    block = text[text.index("```text") + 7:]
    block = block[:block.index("```")]
    out: dict[str, list[tuple[str, str]]] = {}
    command = None
    for line in block.splitlines():
        m = re.match(r"ghost-vllm (\w+)", line)
        if m:
            command = m.group(1)
        for flag, value in re.findall(r"\[(--[\w-]+) ([^\]\s|]+)\]", line):
            if re.fullmatch(r"[0-9.,]+[A-Za-z]*|[a-z]+", value):  # a literal, not a placeholder (DIR, N, PATH…)
                out.setdefault(command, []).append((flag, value))
    return out


def _default(command: str, flag: str):
    from ghost_vllm.cli import build_parser
    from ghost_vllm.recipe import Recipe

    parser = build_parser()
    sub = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices[command]
    if command == "bench":
        sub = next(a for a in sub._subparsers._group_actions).choices["capacity"]
    action = next(a for a in sub._actions if flag in a.option_strings)
    if command == "plan" and flag == "--sparsity":  # None = the what-ifs run_plan plans for a dense model
        from ghost_vllm.commands.plan import DEFAULT_WHAT_IFS

        assert action.default is None
        return ",".join(f"{k:g}" for k in DEFAULT_WHAT_IFS)
    if action.default is not None or command != "prune":
        return action.default
    section, key = PRUNE_RECIPE_KEYS[action.dest].split(".")
    return getattr(getattr(Recipe(), section), key)


def test_synopsis_values_are_the_defaults():
    found = _synopsis()
    assert {"prune", "eval", "plan", "bench"} <= set(found)
    checked = 0
    for command, pairs in found.items():
        for flag, shown in pairs:
            real = _default(command, flag)
            assert str(real) == shown or (isinstance(real, (int, float)) and float(shown) == real), \
                (command, flag, shown, real)
            checked += 1
    assert checked >= 15


def test_help_shows_every_default():
    """`ghost-vllm CMD --help` states the default of every option that has one (prune: the recipe's)."""
    import argparse

    from ghost_vllm.cli import build_parser
    from ghost_vllm.commands.helptext import PRUNE_FLAGS, recipe_default

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parsers = dict(sub.choices)
    bench = next(a for a in parsers["bench"]._actions if isinstance(a, argparse._SubParsersAction))
    parsers.update({f"bench {k}": v for k, v in bench.choices.items()})
    checked = 0
    for name, parser in parsers.items():
        help_text = parser.format_help()
        if "options:" not in help_text:  # serve: its own help text (tests/test_early_errors.py)
            continue
        entries = re.split(r"\n  (?=-)", help_text[help_text.index("options:"):])  # one entry per option
        for action in parser._actions:
            default = recipe_default(PRUNE_FLAGS[action.dest]) if name == "prune" and action.dest in PRUNE_FLAGS \
                else action.default
            if not action.option_strings or default in (None, False, [], argparse.SUPPRESS) or action.dest == "help":
                continue
            flag = max(action.option_strings, key=len)
            entry = next(e for e in entries if any(re.match(rf"(-\w+, )*{re.escape(o)}\b", e)
                                                   for o in action.option_strings))
            assert "default" in entry.lower(), f"ghost-vllm {name} --help: {flag} does not state its default {default!r}"
            checked += 1
    assert checked > 30
