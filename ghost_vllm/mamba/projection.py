"""A projected SSM state: the scan runs on ``B' = T·B`` and ``C' = Sᵀ·C`` (per group), so its state is ``h' = T·h``.

Shapes (G = n_groups, N = the B/C width of in_proj and conv1d, r = the state's width):

    T = state_proj_in   [G, r, N]     B'[..., g, j] = Σ_n T[g, j, n] · B[..., g, n]
    S = state_proj_out  [G, N, r]     C'[..., g, j] = Σ_n S[g, n, j] · C[..., g, n]
    y_t = C'_tᵀ h'_t = C_tᵀ · S · T · h_t

The decay exp(dt·A[k]) is one scalar per head, so it commutes with T: the projected scan is exact in form, and with
r = N and S·T = I it is the dense mixer. B and C pass a SiLU after the depthwise conv, so T and S act after it; the
conv state keeps all N channels. How T and S are chosen: :mod:`ghost_vllm.reduce.balanced`.

On a transformers ``Mamba2Mixer``, :func:`attach_projection` registers the two tensors as buffers (saved with the
model's state dict under the names of :mod:`ghost_vllm.ghost_format`) and replaces its forward by one that runs
:func:`ghost_vllm.mamba.reference.mixer_ssm_inputs` (which applies them) and transformers' chunked scan in float32,
then the mixer's own norm and ``out_proj``.
"""

from __future__ import annotations

import torch

from ghost_vllm.mamba.layout import InProjLayout
from ghost_vllm.mamba.reference import (GRAD_CHUNK_SIZE, PROJ_IN_ATTR, PROJ_OUT_ATTR, chunked_scan, mixer_projection,
                                        mixer_ssm_inputs, project_bc)

__all__ = ["project_bc", "attach_projection", "project_mixers", "mixer_projection", "state_rank"]


def state_rank(mixer, default: int) -> int:
    """The width of the mixer's SSM state: r for a projected mixer, else ``default`` (its N)."""
    p = mixer_projection(mixer)
    return default if p is None else int(p[0].shape[1])


def _projected_forward(self, hidden_states: torch.Tensor, cache_params=None, attention_mask=None, **kwargs):
    if cache_params is not None and getattr(cache_params, "has_previous_state", lambda *_: False)(self.layer_idx):
        raise NotImplementedError("a projected mixer runs whole sequences in transformers (use_cache=False); "
                                  "serve it with vLLM for incremental decoding")
    if attention_mask is not None and not bool(attention_mask.all()):
        raise NotImplementedError("a projected mixer takes unpadded batches in transformers")
    layout = InProjLayout(hidden_states.shape[-1], self.num_heads, self.head_dim, self.n_groups, self.ssm_state_size,
                          self.conv_kernel_size)
    s = mixer_ssm_inputs(self, layout, hidden_states)  # B, C projected: [b, T, G, r]
    b, T = hidden_states.shape[:2]
    y = chunked_scan(s, s.B, s.C, min(int(getattr(self, "chunk_size", 256)), GRAD_CHUNK_SIZE)).reshape(b, T, -1)
    # the mixer's own norm and out_proj modules (hooks on them fire, e.g. the readout refit's)
    return self.out_proj(self.norm(y, s.z).to(hidden_states.dtype))


def attach_projection(mixer, proj_in: torch.Tensor, proj_out: torch.Tensor) -> None:
    """Make a transformers Mamba2 mixer project its state: ``proj_in`` T [G, r, N], ``proj_out`` S [G, N, r] become
    float32 buffers (``state_proj_in`` / ``state_proj_out``) and its class becomes a subclass whose forward applies
    them. Idempotent."""
    G, r, N = proj_in.shape
    if tuple(proj_out.shape) != (G, N, r):
        raise AssertionError(f"state_proj_out has shape {tuple(proj_out.shape)}, expected {(G, N, r)}")
    if N != int(mixer.ssm_state_size) or G != int(mixer.n_groups):
        raise AssertionError(f"projection [{G}, {r}, {N}] does not fit a mixer with n_groups {mixer.n_groups}, "
                             f"state_size {mixer.ssm_state_size}")
    device = mixer.in_proj.weight.device
    mixer.register_buffer(PROJ_IN_ATTR, proj_in.detach().to(device=device, dtype=torch.float32).contiguous())
    mixer.register_buffer(PROJ_OUT_ATTR, proj_out.detach().to(device=device, dtype=torch.float32).contiguous())
    if not getattr(type(mixer), "projected_state", False):
        mixer.__class__ = _projected_class(type(mixer))


_CLASSES: dict[type, type] = {}


def _projected_class(base: type) -> type:
    """``base`` with the projected forward (a subclass, so that code which patches a mixer's forward for a while and
    then deletes the instance attribute gets the projected forward back)."""
    if base not in _CLASSES:
        _CLASSES[base] = type(f"Projected{base.__name__}", (base,), {"forward": _projected_forward,
                                                                     "projected_state": True})
    return _CLASSES[base]


def project_mixers(model, ranks) -> None:
    """Give every mixer of a (meta-device or freshly built) transformers ``Mamba2ForCausalLM`` uninitialised
    projection tensors of rank r_l, so that a projected checkpoint's tensors load into it."""
    for block, r in zip(model.backbone.layers, ranks):
        mixer = block.mixer
        G, N = int(mixer.n_groups), int(mixer.ssm_state_size)
        device = mixer.in_proj.weight.device
        attach_projection(mixer, torch.empty(G, int(r), N, device=device), torch.empty(G, N, int(r), device=device))
