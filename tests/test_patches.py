"""The vLLM patch registry: version guard, source guard, idempotence, and the packaging that installs it."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, written_for", [("ssu-backend-uniform-type", "0.32.0, 0.33.0"),
                                               ("cpu-default-cache-size", "0.32.0")])
def test_version_guard_refuses_other_vllm_versions(name, written_for):
    from ghost_vllm_patches import PATCHES, PatchError, apply_patch

    patch = PATCHES[name]
    fakes = ("0.34.0", "0.31.2+cpu", "unknown") + (("0.33.0",) if "0.33.0" not in written_for else ())
    for fake in fakes:
        with pytest.raises(PatchError, match=f"written for vLLM {written_for}, the installed vLLM is "
                                             f"{fake.replace('+', '.')}"):
            apply_patch(patch, version=fake)


def test_each_version_is_guarded_by_its_own_source_hash():
    """0.33.0 is accepted by the SSU patch only with 0.33.0's recorded hash: the installed 0.32.0 code posing as
    0.33.0 passes because the function is byte-identical in both (benchmarks/results/vllm033)."""
    from ghost_vllm_patches import PATCHES, PatchError, apply_patch

    patch = PATCHES["ssu-backend-uniform-type"]
    assert set(patch.vllm_versions) == {"0.32.0", "0.33.0"}
    apply_patch(patch, version="0.33.0")
    other = dataclasses.replace(patch, target_sha256={**patch.target_sha256, "0.33.0": "f" * 64})
    with pytest.raises(PatchError, match="is not the code the patch was written for"):
        apply_patch(other, version="0.33.0")
    apply_patch(other, version="0.32.0")


@pytest.mark.parametrize("name", ["ssu-backend-uniform-type", "cpu-default-cache-size"])
def test_source_guard_refuses_changed_upstream_code(name):
    from ghost_vllm_patches import PATCHES, PatchError, apply_patch

    changed = dataclasses.replace(PATCHES[name], target_sha256={v: "0" * 64 for v in PATCHES[name].vllm_versions})
    with pytest.raises(PatchError, match="is not the code the patch was written for"):
        apply_patch(changed, version="0.32.0+cpu")


def test_pinned_vllm_matches_and_install_is_idempotent():
    from vllm.model_executor.layers.mamba.ops import ssu_dispatch

    from ghost_vllm_patches import PATCHES, apply_patch, installed_vllm_version, source_sha256

    patch = PATCHES["ssu-backend-uniform-type"]
    assert installed_vllm_version().split("+")[0] in patch.vllm_versions
    assert source_sha256(patch.target) == patch.target_sha256["0.32.0"]
    apply_patch(patch)
    first = ssu_dispatch.initialize_mamba_ssu_backend
    apply_patch(patch)
    assert ssu_dispatch.initialize_mamba_ssu_backend is first
    assert source_sha256(patch.target) == patch.target_sha256["0.32.0"]  # the original is still what is hashed


def test_cpu_cache_patch_matches_and_is_idempotent():
    from vllm.platforms.cpu import CpuPlatform

    from ghost_vllm_patches import PATCHES, apply_patch, source_sha256

    patch = PATCHES["cpu-default-cache-size"]
    assert source_sha256(patch.target) == patch.target_sha256["0.32.0"]
    apply_patch(patch)
    first = CpuPlatform.__dict__["check_and_update_config"]
    apply_patch(patch)
    assert CpuPlatform.__dict__["check_and_update_config"] is first
    assert source_sha256(patch.target) == patch.target_sha256["0.32.0"]


def test_every_subpackage_is_packaged():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "ghost_vllm").rglob("__init__.py")}
    assert found | {"ghost_vllm_patches"} == listed
    assert cfg["package-dir"]["ghost_vllm_patches"] == "patches"
