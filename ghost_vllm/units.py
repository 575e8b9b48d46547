"""Units, defined once: bytes per element of the state-cache dtypes vLLM takes, and memory sizes as people write them
(``80GiB``, ``80GB``, ``8e10``, ``26100000``, ``256MiB``). Every command, the planner, the state arithmetic and the
plugin read these; nothing restates them."""

from __future__ import annotations

import math
import re

from ghost_vllm.errors import RecipeError

__all__ = ["DTYPE_BYTES", "STATE_DTYPES", "INT8_SCALE_BYTES", "ssm_state_bytes", "serving_dtypes", "parse_size",
           "format_size"]

# the dtypes vLLM (0.32/0.33) keeps conv and SSM states in (`--dtype`, `--mamba-ssm-cache-dtype`)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# the SSM-state dtypes the plugin serves: vLLM's, and int8 + one float32 scale per head (ghost_vllm.mamba.int8_state)
STATE_DTYPES = (*DTYPE_BYTES, "int8")
INT8_SCALE_BYTES = 4  # per head, layer and sequence


def ssm_state_bytes(elements: int, heads: int, dtype: str) -> int:
    """Bytes of ``elements`` SSM-state elements spread over ``heads`` heads (one layer's, or a sum of layers' with
    their heads summed) in ``dtype``: int8 adds its per-head float32 scales."""
    if dtype == "int8":
        return elements + heads * INT8_SCALE_BYTES
    if dtype not in DTYPE_BYTES:
        raise RecipeError(f"SSM state dtype {dtype!r}: use one of {', '.join(STATE_DTYPES)}")
    return elements * DTYPE_BYTES[dtype]



def serving_dtypes(config_dtype: str, dtype: str = "auto", ssm_dtype: str = "auto") -> tuple[str, str]:
    """(model/conv-state dtype, SSM-state dtype) a pure Mamba2 engine runs for ``--dtype`` / ``--mamba-ssm-cache-dtype``
    on GPU: "auto" takes the config's 16-bit dtype and serves a float32 (or unknown) config in bfloat16; the SSM state
    follows the model dtype unless set. (Hybrid families' own SSM default: ``Family.default_ssm_cache_dtype``.)"""
    d = str(config_dtype).replace("torch.", "")
    model = dtype if dtype in DTYPE_BYTES else ("bfloat16" if d not in DTYPE_BYTES or d == "float32" else d)
    return model, (ssm_dtype if ssm_dtype in DTYPE_BYTES else model)


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*")


def parse_size(text: str, flag: str = "size") -> int:
    """``text`` → bytes (a positive integer; fractions of a byte round down). Decimal units KB/MB/GB/TB, binary
    KiB/MiB/GiB/TiB, case-insensitive; a bare number is bytes."""
    m = _SIZE.fullmatch(str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise RecipeError(f"{flag} {text!r}: not a memory size; write it like 80GiB, 80GB, 8e10 or 26100000 "
                          f"(units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    value = float(m.group(1)) * _UNITS[unit]
    if not math.isfinite(value) or value < 1:
        raise RecipeError(f"{flag} {text!r}: must be at least one byte")
    return int(value)


def format_size(n: int) -> str:
    """Bytes → ``1.50 GiB`` / ``26.1 MB``-style text (binary units; exact byte count for small values)."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"
