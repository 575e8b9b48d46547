"""A pure-PyTorch Mamba2 mixer with a sequential scan we control (the source of h_t for the GHOST statistics).

Shapes (b = batch, T = tokens, H = heads, P = head_dim, G = n_groups, N = state_size, I = H·P):

    h_t[k,p,n] = exp(dt_t[k]·A[k]) · h_{t-1}[k,p,n] + dt_t[k] · B_t[g(k),n] · x_t[k,p]
    y_t[k,p]   = Σ_n C_t[g(k),n] · h_t[k,p,n] + D[k] · x_t[k,p]

The gated RMSNorm normalises per group, as mamba_ssm and vLLM do (transformers ignores ``n_groups`` there).
Everything is computed in float32 whatever the weights' dtype.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ghost_vllm.mamba.layout import InProjLayout

__all__ = ["StepCallback", "chunked_scan", "project_bc", "mixer_projection", "ssm_scan", "gated_group_rmsnorm", "SSMInputs", "mixer_ssm_inputs", "mixer_forward"]

# on_step(h [b, H, P, N], C_t [b, G, N]) after the state update at step t, before C_t reads it; h is the scan's own
# buffer (updated in place at the next step): read it, don't keep it
StepCallback = Callable[[torch.Tensor, torch.Tensor], None]


# a projected mixer's two tensors (ghost_vllm.mamba.projection; names as in ghost_vllm.ghost_format)
PROJ_IN_ATTR = "state_proj_in"  # T [G, r, N]
PROJ_OUT_ATTR = "state_proj_out"  # S [G, N, r]


def project_bc(B: torch.Tensor, C: torch.Tensor, proj_in: torch.Tensor,
               proj_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``B, C [..., G, N]`` → ``B' = T·B``, ``C' = Sᵀ·C`` ``[..., G, r]`` with ``proj_in`` T [G, r, N] and
    ``proj_out`` S [G, N, r] (float32 math, B's dtype out): the scan on (B', C') holds ``h' = T·h``."""
    Bp = torch.einsum("grn,...gn->...gr", proj_in.float(), B.float())
    Cp = torch.einsum("gnr,...gn->...gr", proj_out.float(), C.float())
    return Bp.to(B.dtype), Cp.to(C.dtype)


def mixer_projection(mixer) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """(T, S) of a projected mixer (:func:`ghost_vllm.mamba.projection.attach_projection`), or None."""
    T = getattr(mixer, PROJ_IN_ATTR, None)
    return None if T is None else (T, getattr(mixer, PROJ_OUT_ATTR))


def ssm_scan(
    x: torch.Tensor,  # [b, T, H, P]
    dt: torch.Tensor,  # [b, T, H], after softplus and clamping
    A: torch.Tensor,  # [H], negative
    B: torch.Tensor,  # [b, T, G, N]
    C: torch.Tensor,  # [b, T, G, N]
    D: torch.Tensor,  # [H]
    on_step: Optional[StepCallback] = None,
    initial_state: Optional[torch.Tensor] = None,  # [b, H, P, N]
    on_store: Optional[Callable[[torch.Tensor], None]] = None,
    readout: bool = True,
) -> tuple[Optional[torch.Tensor], torch.Tensor]:
    """Sequential selective scan. Returns ``y [b, T, H, P]`` and the final state ``h_T [b, H, P, N]``.
    ``on_store(h)`` runs after y_t has been read from h_t and may change h in place: what a decode-time state cache
    does when it stores the state in a narrower format (the next step reads the stored value).
    ``readout=False``: only the states (for ``on_step``; y is None) — a statistics pass skips the C·h read."""
    b, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    hpg = H // G
    h = x.new_zeros(b, H, P, N) if initial_state is None else initial_state.clone()
    # without autograd the state is updated in place: one [b, H, P, N] buffer for the whole scan instead of a fresh
    # one per token (which fragments glibc's heap by hundreds of MB on real shapes); on_step must not keep h
    in_place = not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, dt, A, B, C, D)))
    ys = []
    for t in range(T):
        decay = torch.exp(dt[:, t] * A)  # [b, H]
        B_t = B[:, t].repeat_interleave(hpg, dim=1)  # [b, H, N]
        if in_place:
            h.mul_(decay[:, :, None, None]).addcmul_((dt[:, t, :, None] * x[:, t])[..., None], B_t[:, :, None, :])
        else:
            h = decay[:, :, None, None] * h + (dt[:, t, :, None] * x[:, t])[..., None] * B_t[:, :, None, :]
        if on_step is not None:
            on_step(h, C[:, t])
        if readout:
            ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t].repeat_interleave(hpg, dim=1)) + D[:, None] * x[:, t])
        if on_store is not None:
            on_store(h)
    return (torch.stack(ys, dim=1) if readout else None), h


def gated_group_rmsnorm(
    y: torch.Tensor, z: Optional[torch.Tensor], weight: torch.Tensor, eps: float, n_groups: int
) -> torch.Tensor:
    """``rmsnorm(y · silu(z))`` over each of the ``n_groups`` slices of the last dim, times ``weight``. y, z: [..., I].
    With ``z`` None there is no gate."""
    g = y if z is None else y * F.silu(z)
    shape = g.shape
    g = g.view(*shape[:-1], n_groups, shape[-1] // n_groups)
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)
    return weight.float() * g.view(shape)


class SSMInputs:
    """The tensors the scan reads, for one batch: z [b,T,I], x [b,T,H,P], dt [b,T,H], A [H], B, C [b,T,G,N], D [H]."""

    __slots__ = ("z", "x", "dt", "A", "B", "C", "D")

    def __init__(self, z, x, dt, A, B, C, D):
        self.z, self.x, self.dt, self.A, self.B, self.C, self.D = z, x, dt, A, B, C, D


def mixer_ssm_inputs(mixer, layout: InProjLayout, hidden: torch.Tensor,
                     in_proj_scale: Optional[torch.Tensor] = None) -> SSMInputs:
    """in_proj → causal depthwise conv1d → SiLU → split, for ``hidden [b, T, hidden_size]`` (already normed).
    ``in_proj_scale [rows]`` multiplies in_proj's output first (a family's µP multipliers, e.g. Falcon-H1's).
    A projected mixer's B and C come out projected (``[b, T, G, r]``, :func:`project_bc`)."""
    b, T, _ = hidden.shape
    w = mixer.in_proj.weight.float()
    bias = None if mixer.in_proj.bias is None else mixer.in_proj.bias.float()
    zxbcdt = F.linear(hidden.float(), w, bias)
    if in_proj_scale is not None:
        zxbcdt = zxbcdt * in_proj_scale.float()
    I, H = layout.intermediate_size, layout.num_heads
    z, xBC, dt = torch.split(zxbcdt, [I, layout.conv_dim, H], dim=-1)
    conv_b = None if mixer.conv1d.bias is None else mixer.conv1d.bias.float()
    xBC = F.conv1d(
        xBC.transpose(1, 2), mixer.conv1d.weight.float(), conv_b, padding=layout.conv_kernel - 1, groups=layout.conv_dim
    )[..., :T].transpose(1, 2)
    xBC = F.silu(xBC)
    GN = layout.n_groups * layout.state_size
    x, B, C = torch.split(xBC, [I, GN, GN], dim=-1)
    dt = F.softplus(dt + mixer.dt_bias.float())
    lo, hi = getattr(mixer, "time_step_limit", (0.0, float("inf")))
    dt = torch.clamp(dt, min=lo, max=hi)
    B = B.reshape(b, T, layout.n_groups, layout.state_size)
    C = C.reshape(b, T, layout.n_groups, layout.state_size)
    projection = mixer_projection(mixer)
    if projection is not None:
        B, C = project_bc(B, C, *projection)
    return SSMInputs(z=z, x=x.reshape(b, T, H, layout.head_dim), dt=dt, A=-torch.exp(mixer.A_log.float()), B=B, C=C,
                     D=mixer.D.float())


def mixer_forward(
    mixer,
    layout: InProjLayout,
    hidden: torch.Tensor,  # [b, T, hidden_size], the output of the block's pre-norm
    mask: Optional[torch.Tensor] = None,  # [G, N] multiplies B and C (1 keeps, 0 removes a channel)
    on_step: Optional[StepCallback] = None,
    chunked: bool = False,
    on_store: Optional[Callable[[torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Whole mixer in float32. Returns ``[b, T, hidden_size]``.

    ``chunked=False`` runs our sequential scan (``on_step`` sees every state); ``chunked=True`` runs transformers'
    chunked SSD instead (same math, far less autograd memory; used for the Taylor gradients, no ``on_step``).
    """
    s = mixer_ssm_inputs(mixer, layout, hidden)
    B, C = (s.B, s.C) if mask is None else (s.B * mask, s.C * mask)
    if chunked:
        if on_step is not None:
            raise AssertionError("on_step needs the sequential scan")
        y = chunked_scan(s, B, C, min(int(getattr(mixer, "chunk_size", 256)), GRAD_CHUNK_SIZE))
    else:
        y, _ = ssm_scan(s.x, s.dt, s.A, B, C, s.D, on_step=on_step, on_store=on_store)
    b, T = hidden.shape[:2]
    y = gated_group_rmsnorm(y.reshape(b, T, -1), s.z, mixer.norm.weight, mixer.norm.variance_epsilon, layout.n_groups)
    w = mixer.out_proj.weight.float()
    bias = None if mixer.out_proj.bias is None else mixer.out_proj.bias.float()
    return F.linear(y, w, bias)


# chunks of the SSD's quadratic intra-chunk part: the released configs' 256 makes each calibration window one padded
# chunk whose [chunk × chunk] terms dominate the backward on CPU; 64 is the same math, cheaper
# (benchmarks/results/budgets/timing-mamba2-130m.json)
GRAD_CHUNK_SIZE = 64


def chunked_scan(s: SSMInputs, B: torch.Tensor, C: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """transformers' chunked SSD on ``s`` with ``B``, ``C [b, T, G, n]`` → ``y [b, T, H, P]`` (float32)."""
    from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan

    # dt is already softplus'ed and clamped: pass no bias, no softplus
    return mamba2_chunk_scan(s.x, s.dt, s.A, B, C, chunk_size=chunk_size, D=s.D)
