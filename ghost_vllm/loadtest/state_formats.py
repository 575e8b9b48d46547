"""SSM-state storage formats for the quality-per-byte frontier: the state is rounded to the format after every token
(what a decode-time state cache does: the next step reads the stored value), everything else stays float32.

float32 / bfloat16 / float16: a cast and back (vLLM's ``--mamba-ssm-cache-dtype`` today). fp8_e4m3 / int8: one
float32 scale per head and sequence (amax over head_dim × N, mapped to the format's largest value: 448 / 127) —
the shape of the upstream int8/fp8 state-cache proposals; the scales are counted in the bytes. int8 is the format the
plugin serves (``ghost_vllm.mamba.int8_state``, one definition); ``int8_row`` (a scale per (head, head_dim) row) and
``int8_sr`` (stochastic rounding, seeded) are its measured alternatives."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch

from ghost_vllm.mamba import int8_state
from ghost_vllm.units import STATE_DTYPE_TABLE, StateDtype

__all__ = ["StateFormat", "FORMATS", "INT8_VARIANTS", "state_format", "stored_state_mixers", "serving_state"]


@dataclass(frozen=True)
class StateFormat:
    name: str
    element_bytes: int
    scale_bytes_per_head: int  # per sequence, per layer (per head_dim row where ``granularity`` is "row")
    granularity: str = "head"
    stochastic: bool = False
    torch_name: str = ""  # the element dtype (default: the name)
    max_value: float = 0.0  # a scaled format: the largest value a per-head amax maps to

    def ssm_bytes(self, heads: int, head_dim: int, state_size: int) -> int:
        """SSM state bytes of one layer and one sequence in this format."""
        rows = head_dim if self.granularity == "row" else 1
        return heads * head_dim * state_size * self.element_bytes + heads * rows * self.scale_bytes_per_head

    def round_(self, h: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Round ``h [b, H, P, N]`` (float32) to this format in place."""
        elem = self.torch_name or self.name
        if elem == "float32":
            return
        if not self.scale_bytes_per_head:  # a plain cast (vLLM's 16-bit states)
            h.copy_(h.to(getattr(torch, elem)).float())
            return
        if elem == "int8":  # the served int8 format, one definition (ghost_vllm.mamba.int8_state)
            int8_state.round_trip_(h, self.granularity, generator if self.stochastic else None)
            return
        scale = h.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-30) / self.max_value  # [b, H, 1, 1]
        h.copy_((h / scale).to(getattr(torch, elem)).float() * scale)


def _from_row(row: StateDtype) -> StateFormat:
    return StateFormat(row.name, row.element_bytes, row.scale_bytes_per_head, torch_name=row.torch_name,
                       max_value=row.max_value)


# every state dtype of the table, plus the frontier's fp8 (an upstream proposal's format, not a served one)
FORMATS = {**{n: _from_row(r) for n, r in STATE_DTYPE_TABLE.items()},
           "fp8_e4m3": StateFormat("fp8_e4m3", 1, 4, torch_name="float8_e4m3fn", max_value=448.0)}


def state_format(name: str) -> StateFormat:
    """The simulation of a state dtype: the table's row (read when asked, so an added row is simulated too), else a
    frontier-only format of :data:`FORMATS`."""
    row = STATE_DTYPE_TABLE.get(name)
    return _from_row(row) if row is not None else FORMATS[name]
# measured alternatives of the served int8 format (not in the frontier grid)
INT8_VARIANTS = {f.name: f for f in (StateFormat("int8_row", 1, 4, "row"), StateFormat("int8_sr", 1, 4, "head", True))}


@contextlib.contextmanager
def stored_state_mixers(model, fmt: StateFormat) -> Iterator[None]:
    """While active, every mixer runs our sequential scan (float32) with its state stored in ``fmt`` after each
    token. Per-layer state sizes are honoured. Full-sequence forwards only (no cache, no padding)."""
    from ghost_vllm.mamba.reference import mixer_forward
    from ghost_vllm.stats.capture import patched_mixers

    generator = torch.Generator().manual_seed(0)
    store = None if fmt.name == "float32" else (lambda h: fmt.round_(h, generator))

    def forward(i, mixer, layout, hidden):
        return mixer_forward(mixer, layout, hidden, on_store=store)

    with patched_mixers(model, forward, "stored_state_mixers"):
        yield


def serving_state(model, state_dtype: str | None) -> contextlib.AbstractContextManager:
    """:func:`stored_state_mixers` for a narrower ``state_dtype`` (``int8``, ``bfloat16``, ``float16``); nothing for
    float32 / None (the model's own forward)."""
    if state_dtype in (None, "float32"):
        return contextlib.nullcontext()
    return stored_state_mixers(model, state_format(state_dtype))
