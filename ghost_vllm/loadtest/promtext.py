"""Prometheus text format: parse a /metrics scrape, write a summary as a textfile (valid per ``promtool``)."""

from __future__ import annotations

import re
from typing import Iterable

__all__ = ["parse_metrics", "metric_sum", "format_textfile"]

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)(?:\s+\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples as (name, labels, value); comments and malformed lines are skipped."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        try:
            out.append((m.group(1), labels, float(m.group(3))))
        except ValueError:
            continue
    return out


def metric_sum(samples: list[tuple[str, dict[str, str], float]], name: str, **match: str) -> float:
    """Sum of every sample of ``name`` whose labels include ``match``."""
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == val for k, val in match.items()))


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_textfile(families: Iterable[tuple[str, str, str, list[tuple[dict[str, str], float]]]]) -> str:
    """``(name, type, help, [(labels, value)])`` → exposition text, one HELP/TYPE block per family."""
    lines = []
    for name, kind, help_text, samples in families:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
            lines.append(f"{name}{{{lab}}} {value!r}" if lab else f"{name} {value!r}")
    return "\n".join(lines) + "\n"
