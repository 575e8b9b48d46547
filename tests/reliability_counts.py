"""Tests of the reliability suite record what they tried here; benchmarks/reliability.py renders the file."""

from __future__ import annotations

import json
import os
from pathlib import Path


def record(section: str, **counts) -> None:
    path = os.environ.get("GHOST_RELIABILITY_COUNTS")
    if not path:
        return
    p = Path(path)
    data = json.loads(p.read_text()) if p.exists() else {}
    data.setdefault(section, {}).update(counts)
    p.write_text(json.dumps(data, indent=1))
