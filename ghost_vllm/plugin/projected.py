"""A projected SSM state in vLLM (``ghost_state_ranks``, method "balanced"): the mixer's in_proj and conv1d keep the
full B/C width N, and after the conv + SiLU it applies, per group, ``B' = T·B`` and ``C' = Sᵀ·C``
(:func:`ghost_vllm.mamba.reference.project_bc`) with

    T = state_proj_in   [G/tp, r_l, N]   float32 (replicated when n_groups == 1, else rank's slice of G)
    S = state_proj_out  [G/tp, N, r_l]   float32

so the scan and the state update run with d_state = r_l and the layer's cache page holds

    conv  [(I + 2·G_tp·N)/tp, K-1]   (N wide, as the dense model's)
    ssm   [H/tp, P, r_l]             (or int8 codes [H/tp, P, r_l] + scales [H/tp]: ``GhostInt8MambaMixer2``)

What was verified in vLLM 0.32.0 (``vllm/model_executor/layers/mamba/mamba_mixer2.py``, ``MambaMixer2``):

* ``ssm_state_size`` (l. 324) is read after ``__init__`` only as the state width: ``_warmup_ssd_kernels``' dstate
  (l. 630), the decode path's ``A.expand(-1, head_dim, ssm_state_size)`` (l. 965), ``get_state_shape`` (l. 1132);
  in ghost_vllm's int8 mixer, the decode work buffer and ``A`` expansion. The conv and in_proj widths come from
  ``groups_ssm_state_size`` / ``conv_dim`` / ``tped_conv_size`` (l. 342-343, 558), computed once in ``__init__`` at N.
  So :func:`project_mixer` sets ``ssm_state_size = r_l`` after the build, and :meth:`GhostProjectedMambaMixer2.get_state_shape`
  puts the conv shape back at N (``mamba2_state_shape`` derives both from one ``state_size``).
* B and C after the conv come from ``self.split_hidden_states_B_C_fn`` (an instance attribute, set at l. 513 and
  again at l. 561) and nowhere else: the profile run (l. 782), the prefill (l. 834, then ``B_p.view(T, G/tp, -1)``,
  l. 857-858) and the decode (l. 957, then ``B_d.view(-1, G/tp, B_d.shape[1] // G/tp)``, l. 971-972), and the
  same three in ``GhostInt8MambaMixer2.conv_ssm_forward`` / ``_prefill`` / ``_decode``. ``forward`` (l. 574) only
  runs in_proj, the custom op and the gated norm; nothing else reads x/B/C. :func:`project_mixer` deletes the
  instance attribute so that :meth:`GhostProjectedMambaMixer2.split_hidden_states_B_C_fn` (split at N, then project) is used.
* The ReplaySSM rings (``use_replayssm``) store B at the state's width through another path: refused.
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.distributed import get_tensor_model_parallel_rank
from vllm.model_executor.layers.mamba.mamba_utils import MambaStateShapeCalculator
from vllm.model_executor.utils import set_weight_attrs

from ghost_vllm.ghost_format import PROJ_IN, PROJ_OUT
from ghost_vllm.mamba.reference import project_bc
from ghost_vllm.plugin.int8_mixer import GhostInt8MambaMixer2
from ghost_vllm.plugin.mixer import GhostMambaMixer2

__all__ = ["GhostProjectedMambaMixer2", "GhostProjectedInt8MambaMixer2", "project_mixer",
           "projection_names"]


class GhostProjectedMambaMixer2(GhostMambaMixer2):
    """A mixer whose SSM state is ``ssm_state_size`` = r wide while its B/C channels (in_proj, conv1d, conv state)
    are ``bc_state_size`` = N wide. Put first in the bases of another ``GhostMambaMixer2`` subclass, it projects
    that one's state too (a plain mixin class there breaks the ``__class__`` swap: "object layout differs")."""

    bc_state_size: int  # N
    state_proj_in: nn.Parameter  # [G/tp, r, N]
    state_proj_out: nn.Parameter  # [G/tp, N, r]

    def split_hidden_states_B_C_fn(self, hidden_states_B_C: torch.Tensor):
        """``[T, I/tp + 2·(G/tp)·N]`` (after the conv) → x ``[T, I/tp]``, B' and C' ``[T, (G/tp)·r]``."""
        g, n = self.n_groups // self.tp_size, self.bc_state_size
        x, B, C = torch.split(hidden_states_B_C, [self.tped_intermediate_size, g * n, g * n], dim=-1)
        Bp, Cp = project_bc(B.unflatten(-1, (g, n)), C.unflatten(-1, (g, n)), self.state_proj_in, self.state_proj_out)
        return x, Bp.flatten(-2), Cp.flatten(-2)

    def get_state_shape(self) -> tuple[tuple[int, ...], ...]:
        """The stock shapes at d_state = r (SSM state and whatever follows it), with the conv state at N."""
        shapes = super().get_state_shape()
        conv = MambaStateShapeCalculator.mamba2_state_shape(
            tp_world_size=self.tp_size, intermediate_size=self.intermediate_size, n_groups=self.n_groups,
            num_heads=self.num_heads, head_dim=self.head_dim, state_size=self.bc_state_size,
            conv_kernel=self.conv_kernel_size, num_spec=self.num_spec)[0]
        return (conv, *shapes[1:])


class GhostProjectedInt8MambaMixer2(GhostProjectedMambaMixer2, GhostInt8MambaMixer2):
    """Projected state cached as int8 codes ``[H/tp, P, r]`` + float32 scales ``[H/tp]``."""


_PROJECTED = {GhostInt8MambaMixer2: GhostProjectedInt8MambaMixer2}


def projection_names(prefix: str) -> tuple[str, str]:
    """The checkpoint names of a mixer's two tensors, e.g. ``backbone.layers.3.mixer.state_proj_in``."""
    return f"{prefix}.{PROJ_IN}", f"{prefix}.{PROJ_OUT}"


def _loader(name: str, full_groups: int, replicated: bool):
    """A weight loader that copies ``[G, a, b]`` (or this rank's ``G/tp`` groups of it) and refuses any other shape,
    naming the tensor."""

    def load(param: nn.Parameter, loaded: torch.Tensor) -> None:
        local = param.shape[0]
        want = (full_groups, *param.shape[1:])
        if tuple(loaded.shape) != want:
            raise ValueError(f"ghost projected checkpoint: {name} has shape {tuple(loaded.shape)}, expected {want} "
                             f"(n_groups, rank, state_size as config.json says); re-run 'ghost-vllm prune'")
        if not replicated:
            loaded = loaded.narrow(0, get_tensor_model_parallel_rank() * local, local)
        param.data.copy_(loaded.to(torch.float32))

    return load


def project_mixer(mixer, rank: int, n_groups: int) -> None:
    """Turn a built ``GhostMambaMixer2`` / ``GhostInt8MambaMixer2`` / stock ``MambaMixer2`` (built at N) into its
    projected class with an SSM state ``rank`` wide; ``n_groups`` is the checkpoint's (before vLLM replicates a
    single group across TP ranks). Registers ``state_proj_in`` / ``state_proj_out`` (filled by the weight loader)."""
    if getattr(mixer, "use_replayssm", False):
        raise ValueError("ghost projected checkpoint: ReplaySSM is not supported with a projected state; drop "
                         "--use-replayssm")
    cls = type(mixer)
    if isinstance(mixer, GhostProjectedMambaMixer2):
        raise AssertionError(f"{mixer.prefix}: already projected")
    n = int(mixer.ssm_state_size)
    if not 1 <= rank <= n:
        raise AssertionError(f"{mixer.prefix}: rank {rank} outside [1, {n}]")
    local = mixer.n_groups // mixer.tp_size
    replicated = n_groups == 1  # vLLM gives every rank a copy of the one group (MambaMixer2.__init__, l. 333-340)
    dev = mixer.A.device
    names = projection_names(mixer.prefix)
    for attr, shape, name in ((PROJ_IN, (local, rank, n), names[0]), (PROJ_OUT, (local, n, rank), names[1])):
        param = nn.Parameter(torch.empty(shape, dtype=torch.float32, device=dev), requires_grad=False)
        set_weight_attrs(param, {"weight_loader": _loader(name, n_groups, replicated)})
        mixer.register_parameter(attr, param)
    mixer.bc_state_size = n
    mixer.ssm_state_size = rank
    del mixer.split_hidden_states_B_C_fn  # the instance attribute; the class's method takes over
    mixer.__class__ = _PROJECTED.get(cls, GhostProjectedMambaMixer2)
