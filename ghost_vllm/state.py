"""Exact arithmetic of the Mamba2 recurrent state per sequence (what vLLM's MambaStateShapeCalculator allocates):
per layer a conv state of ``(K-1)·(I + 2·G·N_l)`` and an SSM state of ``H·head_dim·N_l`` elements, summed over the
layers (N_l = ``state_size`` in every layer, or the checkpoint's per-layer ``layer_state_sizes``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

from ghost_vllm.mamba.budgets import config_state_sizes
from ghost_vllm.mamba.layout import InProjLayout

__all__ = ["StateSize", "state_size_of", "DTYPE_BYTES"]

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1}


@dataclass(frozen=True)
class StateSize:
    layers: int
    state_size: int  # the largest N_l
    conv_elements: int  # per sequence, all layers
    ssm_elements: int  # per sequence, all layers
    conv_bytes: int
    ssm_bytes: int

    layer_bytes: tuple[int, ...] = ()  # conv + SSM bytes of each layer

    @property
    def bytes_per_sequence(self) -> int:
        return self.conv_bytes + self.ssm_bytes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"bytes_per_sequence": self.bytes_per_sequence}


def state_size_of(config: dict[str, Any], state_size: Optional[int] = None, dtype: Optional[str] = None,
                  ssm_dtype: Optional[str] = None, state_sizes: Optional[Sequence[int]] = None) -> StateSize:
    """State per sequence for a Mamba2 ``config.json`` dict: every layer at ``state_size``, or per layer at
    ``state_sizes``, or (neither given) as the config says (``layer_state_sizes`` when present). ``dtype`` is the
    conv-state dtype (default: the config's ``torch_dtype``/``dtype``), ``ssm_dtype`` the SSM state's (default: same)."""

    class _C:  # InProjLayout.from_config reads attributes
        pass

    c = _C()
    for k in ("hidden_size", "num_heads", "head_dim", "n_groups"):
        setattr(c, k, config[k])
    L = int(config["num_hidden_layers"])
    if state_sizes is None:
        state_sizes = [state_size] * L if state_size is not None else config_state_sizes(config)
    if len(state_sizes) != L:
        raise AssertionError(f"{len(state_sizes)} state sizes for {L} layers")
    c.state_size = max(state_sizes)
    c.conv_kernel = config.get("conv_kernel", 4)
    layout = InProjLayout.from_config(c)
    dtype = dtype or str(config.get("torch_dtype") or config.get("dtype") or "float32")
    ssm_dtype = ssm_dtype or dtype
    conv = ssm = 0
    per_layer = []
    for n in state_sizes:
        cl, sl = layout.with_state_size(int(n)).state_elements()
        conv, ssm = conv + cl, ssm + sl
        per_layer.append(cl * DTYPE_BYTES[dtype] + sl * DTYPE_BYTES[ssm_dtype])
    return StateSize(L, layout.state_size, conv, ssm, conv * DTYPE_BYTES[dtype], ssm * DTYPE_BYTES[ssm_dtype],
                     tuple(per_layer))
