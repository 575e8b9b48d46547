"""The int8 SSM-state format, defined once: what the serving cache stores, what the simulation rounds to, what the
Triton kernels must reproduce.

A layer's state of one sequence ``h [H, P, N]`` (float32) is stored as ``q [H, P, N]`` int8 plus one float32 scale
per head (``"head"``: ``scale [H]``) or per (head, head_dim) row (``"row"``: ``scale [H, P]``)::

    amax  = max |h| over the scale's group          (P×N elements per head; N per row)
    scale = amax / 127                               (stored)
    q     = clamp(round(h · (127 / amax)), −127, 127)   (0 where amax = 0)
    h'    = q · scale                                (what the next step reads)

``round`` is round-half-to-even (``torch.round``; the kernels use the same), or stochastic rounding
(``floor(x + u)``, ``u ~ U[0, 1)``) where a generator is given. Symmetric: −128 is never written.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["INT8_MAX", "GRANULARITIES", "scale_shape", "quantize", "dequantize", "round_trip_"]

INT8_MAX = 127.0
GRANULARITIES = ("head", "row")


def scale_shape(heads: int, head_dim: int, granularity: str = "head") -> tuple[int, ...]:
    """Shape of one layer's scales for one sequence."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"scale granularity {granularity!r}: use one of {', '.join(GRANULARITIES)}")
    return (heads,) if granularity == "head" else (heads, head_dim)


def quantize(h: torch.Tensor, granularity: str = "head", generator: Optional[torch.Generator] = None,
             overwrite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``h [..., H, P, N]`` float → (``q [..., H, P, N]`` int8, ``scale [..., H]`` or ``[..., H, P]`` float32).
    ``overwrite``: ``h`` (float32) is scratch and may be used as the work buffer (one pass fewer, no allocation)."""
    scale_shape(1, 1, granularity)
    h = h if overwrite and h.dtype == torch.float32 else h.float()
    dims = (-2, -1) if granularity == "head" else (-1,)
    amax = h.abs().amax(dim=dims)  # [..., H] or [..., H, P]
    inv = torch.where(amax > 0, INT8_MAX / amax.clamp_min(1e-38), torch.zeros_like(amax))
    inv = inv[..., None, None] if granularity == "head" else inv[..., None]
    x = h.mul_(inv) if overwrite else h * inv
    if generator is None:
        x.round_()
    else:
        x.add_(torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)).floor_()
    return x.clamp_(-INT8_MAX, INT8_MAX).to(torch.int8), amax / INT8_MAX


def dequantize(q: torch.Tensor, scale: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(``q [..., H, P, N]`` int8, ``scale [..., H]`` or ``[..., H, P]``) → float32 ``[..., H, P, N]`` (into ``out``
    when given)."""
    s = scale[..., None, None] if scale.dim() == q.dim() - 2 else scale[..., None]
    return torch.mul(q, s.float(), out=out) if out is not None else q * s.float()


def round_trip_(h: torch.Tensor, granularity: str = "head", generator: Optional[torch.Generator] = None) -> None:
    """Replace ``h`` (float32) in place by what the int8 cache would give back."""
    h.copy_(dequantize(*quantize(h, granularity, generator)))
