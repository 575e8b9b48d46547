"""Units, defined once: the state-dtype table (what every state dtype costs and who serves it), and memory sizes as
people write them (``80GiB``, ``80GB``, ``8e10``, ``26100000``, ``256MiB``). Every command, the planner, the state
arithmetic, the evaluation simulation and the plugin read these; nothing restates them.

Adding a state dtype is one :class:`StateDtype` row in :data:`STATE_DTYPE_TABLE` (``plan --state-dtype``, ``inspect``,
the recipe's ``output.state_dtype``, ``eval --state-dtype`` and the bytes per sequence follow), plus — to serve it —
the plugin mixer its ``mixer`` field names."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Iterator, Optional

from ghost_vllm.errors import RecipeError

__all__ = ["StateDtype", "STATE_DTYPE_TABLE", "state_dtype", "DTYPE_BYTES", "plugin_state_dtypes",
           "INT8_SCALE_BYTES", "ssm_state_bytes", "serving_dtypes", "parse_size", "format_size"]


@dataclass(frozen=True)
class StateDtype:
    """One dtype a Mamba state can be cached in.

    ``element_bytes`` per state element; ``scale_bytes_per_head``: a float32 scale per head, layer and sequence
    beside the elements (0: none); ``torch_name``: the torch dtype the elements are stored as; ``vllm_native``: vLLM
    itself caches it (``--dtype`` for the conv state, ``--mamba-ssm-cache-dtype``); ``mixer``: the plugin's mixer
    that caches it (``"module:Class"``, None: vLLM's own, or not served yet); ``max_value``: the largest finite
    value the scaled format holds (what a per-head amax maps to; 0: a plain cast), which is how ``eval`` simulates
    it (:mod:`ghost_vllm.loadtest.state_formats`)."""

    name: str
    element_bytes: int
    torch_name: str
    scale_bytes_per_head: int = 0
    vllm_native: bool = False
    mixer: Optional[str] = None
    max_value: float = 0.0

    @property
    def plugin_cached(self) -> bool:
        """The checkpoint asks the plugin for it (``ghost_state_dtype``) rather than vLLM's flags."""
        return not self.vllm_native

    def ssm_bytes(self, elements: int, heads: int) -> int:
        """Bytes of ``elements`` SSM-state elements spread over ``heads`` heads (scales included)."""
        return elements * self.element_bytes + heads * self.scale_bytes_per_head


INT8_SCALE_BYTES = 4  # per head, layer and sequence
STATE_DTYPE_TABLE: dict[str, StateDtype] = {d.name: d for d in (
    StateDtype("float32", 4, "float32", vllm_native=True),
    StateDtype("bfloat16", 2, "bfloat16", vllm_native=True),
    StateDtype("float16", 2, "float16", vllm_native=True),
    # the plugin's int8 SSM state: int8 elements + one float32 scale per head (ghost_vllm.mamba.int8_state)
    StateDtype("int8", 1, "int8", INT8_SCALE_BYTES, mixer="ghost_vllm.plugin.int8_mixer:GhostInt8MambaMixer2",
               max_value=127.0),
)}


def state_dtype(name: str, flag: str = "SSM state dtype") -> StateDtype:
    """The table's row for ``name``; :class:`RecipeError` naming the choices otherwise."""
    row = STATE_DTYPE_TABLE.get(name)
    if row is None:
        raise RecipeError(f"{flag} {name!r}: use one of {', '.join(STATE_DTYPE_TABLE)}")
    return row


class _VllmBytes(Mapping):
    """``{name: element bytes}`` of the dtypes vLLM caches itself — a live view of the table."""

    def __getitem__(self, name: str) -> int:
        row = STATE_DTYPE_TABLE[name]
        if not row.vllm_native:
            raise KeyError(name)
        return row.element_bytes

    def __iter__(self) -> Iterator[str]:
        return (n for n, row in STATE_DTYPE_TABLE.items() if row.vllm_native)

    def __len__(self) -> int:
        return sum(1 for _ in self)


# the dtypes vLLM (0.32/0.33) keeps conv and SSM states in (`--dtype`, `--mamba-ssm-cache-dtype`)
DTYPE_BYTES: Mapping[str, int] = _VllmBytes()


def plugin_state_dtypes() -> tuple[str, ...]:
    """The SSM-state dtypes a checkpoint can ask the plugin for (``ghost_state_dtype``, ``--state-dtype``)."""
    return tuple(n for n, row in STATE_DTYPE_TABLE.items() if row.plugin_cached)


def ssm_state_bytes(elements: int, heads: int, dtype: str) -> int:
    """Bytes of ``elements`` SSM-state elements spread over ``heads`` heads (one layer's, or a sum of layers' with
    their heads summed) in ``dtype``: a scaled format adds its per-head scales."""
    return state_dtype(dtype).ssm_bytes(elements, heads)


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
