"""Exact arithmetic of the Mamba2 recurrent state per sequence (what vLLM's MambaStateShapeCalculator allocates):
per layer a conv state of ``(K-1)·(I + 2·G·N)`` and an SSM state of ``H·head_dim·N`` elements."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from ghost_vllm.mamba.layout import InProjLayout

__all__ = ["StateSize", "state_size_of", "DTYPE_BYTES"]

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1}


@dataclass(frozen=True)
class StateSize:
    layers: int
    state_size: int
    conv_elements: int  # per sequence, all layers
    ssm_elements: int  # per sequence, all layers
    conv_bytes: int
    ssm_bytes: int

    @property
    def bytes_per_sequence(self) -> int:
        return self.conv_bytes + self.ssm_bytes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"bytes_per_sequence": self.bytes_per_sequence}


def state_size_of(config: dict[str, Any], state_size: Optional[int] = None, dtype: Optional[str] = None,
                  ssm_dtype: Optional[str] = None) -> StateSize:
    """State per sequence for a Mamba2 ``config.json`` dict (optionally with another ``state_size``). ``dtype`` is the
    conv-state dtype (default: the config's ``torch_dtype``/``dtype``), ``ssm_dtype`` the SSM state's (default: same)."""

    class _C:  # InProjLayout.from_config reads attributes
        pass

    c = _C()
    for k in ("hidden_size", "num_heads", "head_dim", "n_groups"):
        setattr(c, k, config[k])
    c.state_size = state_size if state_size is not None else config["state_size"]
    c.conv_kernel = config.get("conv_kernel", 4)
    layout = InProjLayout.from_config(c)
    conv, ssm = layout.state_elements()
    L = int(config["num_hidden_layers"])
    dtype = dtype or str(config.get("torch_dtype") or config.get("dtype") or "float32")
    ssm_dtype = ssm_dtype or dtype
    return StateSize(L, layout.state_size, L * conv, L * ssm, L * conv * DTYPE_BYTES[dtype], L * ssm * DTYPE_BYTES[ssm_dtype])
