"""Runtime patches to vLLM that a plugin alone cannot make, installed as the package ``ghost_vllm_patches``.

Each patch is one module exposing ``PATCH`` (a :class:`~ghost_vllm_patches.base.VllmPatch`): the vLLM versions it
was written for, the upstream function it replaces (and the sha256 of that function's source, so a rebuilt wheel
with the same version string but different code is refused too), and ``install()``. The plugin applies a patch only
when a checkpoint that needs it is served; :func:`apply_patch` refuses, with a one-line
:class:`~ghost_vllm_patches.base.PatchError`, on any vLLM it was not written for. See ``patches/README.md``.
"""

from __future__ import annotations

from ghost_vllm_patches import cpu_default_cache, ssu_backend_uniform_type
from ghost_vllm_patches.base import PatchError, VllmPatch, apply_patch, installed_vllm_version, source_sha256

__all__ = ["PATCHES", "PatchError", "VllmPatch", "apply_patch", "installed_vllm_version", "source_sha256"]

PATCHES: dict[str, VllmPatch] = {p.name: p for p in (ssu_backend_uniform_type.PATCH, cpu_default_cache.PATCH)}
