"""The tracked tree must travel: a GPU machine receives the whole tracked tree plus the files a check carries, 64 MiB
at most. Raw per-request load-test data stays out (``samples.jsonl`` is ignored; ``capacity.json`` holds summaries),
so the tree is the bundled models (~37 MB) plus code, docs and result summaries."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the goal is 40 MB; the two bundled float32/bfloat16 models alone are 37.4 MB, so the limit sits at what
# the tree holds today plus headroom for a few result summaries (docs/architecture.md, "What travels")
LIMIT_BYTES = 44_000_000
TRANSFER_LIMIT = 64 * 2**20


def _tracked() -> list[Path]:
    r = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"not a git checkout ({r.stderr.strip()}); the size check reads 'git ls-files'")
    return [ROOT / p for p in r.stdout.split("\0") if p]


def test_tracked_tree_fits_the_limit():
    files = [p for p in _tracked() if p.is_file() and not p.is_symlink()]
    sizes = sorted(((p.stat().st_size, p.relative_to(ROOT).as_posix()) for p in files), reverse=True)
    total = sum(s for s, _ in sizes)
    print(f"\ntracked tree: {total / 1e6:.1f} MB in {len(sizes)} files (limit {LIMIT_BYTES / 1e6:.0f} MB; "
          f"a GPU machine takes {TRANSFER_LIMIT / 2**20:.0f} MiB with the carried files)")
    biggest = ", ".join(f"{name} {size / 1e6:.1f} MB" for size, name in sizes[:5])
    assert total <= LIMIT_BYTES, f"tracked tree {total / 1e6:.1f} MB > {LIMIT_BYTES / 1e6:.0f} MB; largest: {biggest}"
    assert not any(name.endswith("samples.jsonl") for _, name in sizes), "raw load-test samples are tracked"
    big = [f"{name} ({size / 1e6:.1f} MB)" for size, name in sizes
           if size > 1_000_000 and not name.endswith("model.safetensors")]
    assert not big, f"files over 1 MB besides the bundled weights: {big}; commit summaries, not raw data"
