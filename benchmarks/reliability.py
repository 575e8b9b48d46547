"""Run the reliability suite and record what it tried in benchmarks/results/reliability.md (+ .json).

    python benchmarks/reliability.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"


def main() -> int:
    counts = Path(tempfile.mkdtemp()) / "counts.json"
    env = {**os.environ, "GHOST_RELIABILITY_COUNTS": str(counts)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_reliability_offline.py",
                        "tests/test_reliability_server.py"], cwd=ROOT, env=env)
    data = json.loads(counts.read_text()) if counts.exists() else {}
    data["pytest_exit_code"] = r.returncode
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "reliability.json").write_text(json.dumps(data, indent=1) + "\n")
    lines = ["# Reliability record", "", "Written by `python benchmarks/reliability.py` (tests/test_reliability_*.py, "
             f"pytest exit code {r.returncode}).", ""]
    for section, values in data.items():
        if isinstance(values, dict):
            lines += [f"## {section.replace('_', ' ')}", "", "| what | count |", "|---|---|"]
            lines += [f"| {k.replace('_', ' ')} | {v} |" for k, v in values.items()]
            lines.append("")
    (OUT / "reliability.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
