"""Remove state channels from one Mamba2 mixer in place: B/C rows of ``in_proj``, B/C channels of ``conv1d``.
Everything else (z, x, dt rows; A_log, D, dt_bias, norm, out_proj) is untouched."""

from __future__ import annotations

import torch

from ghost_vllm.mamba.layout import InProjLayout

__all__ = ["prune_mixer", "resize_mixer", "zero_channels"]


def _check(name: str, tensor: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != expected:
        raise AssertionError(f"{name}: shape {tuple(tensor.shape)}, expected {expected}")


def prune_mixer(mixer, layout: InProjLayout, keep: torch.Tensor) -> InProjLayout:
    """Keep channels ``keep [G, N']`` of every group. Returns the layout of the pruned mixer."""
    G, n_keep = keep.shape
    if G != layout.n_groups:
        raise AssertionError(f"keep has {G} groups, the layer has {layout.n_groups}")
    _check("in_proj.weight", mixer.in_proj.weight, (layout.in_proj_rows, layout.hidden_size))
    _check("conv1d.weight", mixer.conv1d.weight, (layout.conv_dim, 1, layout.conv_kernel))
    rows = layout.in_proj_keep_rows(keep).to(mixer.in_proj.weight.device)
    chans = layout.conv_keep_channels(keep).to(mixer.conv1d.weight.device)
    old_in, old_conv = mixer.in_proj, mixer.conv1d
    new = resize_mixer(mixer, layout, n_keep)
    with torch.no_grad():
        mixer.in_proj.weight.copy_(old_in.weight[rows])
        if old_in.bias is not None:
            mixer.in_proj.bias.copy_(old_in.bias[rows])
        mixer.conv1d.weight.copy_(old_conv.weight[chans])
        if old_conv.bias is not None:
            mixer.conv1d.bias.copy_(old_conv.bias[chans])
    return new


def resize_mixer(mixer, layout: InProjLayout, n: int) -> InProjLayout:
    """Give the mixer fresh (uninitialised) ``in_proj``/``conv1d`` modules for state size ``n`` on the same device and
    dtype — the shapes of a pruned mixer, e.g. to load a per-layer checkpoint into a meta-device model."""
    new = layout.with_state_size(n)
    old_in, old_conv = mixer.in_proj, mixer.conv1d
    mixer.in_proj = torch.nn.Linear(layout.hidden_size, new.in_proj_rows, bias=old_in.bias is not None,
                                    device=old_in.weight.device, dtype=old_in.weight.dtype)
    mixer.conv1d = torch.nn.Conv1d(new.conv_dim, new.conv_dim, kernel_size=layout.conv_kernel, groups=new.conv_dim,
                                   padding=layout.conv_kernel - 1, bias=old_conv.bias is not None,
                                   device=old_conv.weight.device, dtype=old_conv.weight.dtype)
    mixer.ssm_state_size = n
    mixer.conv_dim = new.conv_dim
    _check("in_proj.weight (resized)", mixer.in_proj.weight, (new.in_proj_rows, new.hidden_size))
    _check("conv1d.weight (resized)", mixer.conv1d.weight, (new.conv_dim, 1, new.conv_kernel))
    return new


def zero_channels(mixer, layout: InProjLayout, removed: torch.Tensor) -> None:
    """Zero (not remove) the B/C rows and conv channels of ``removed [G, R]`` — the dense twin of
    :func:`prune_mixer` used to check surgery. The conv bias is zeroed too, so silu(0) = 0 reaches the scan."""
    flat = layout.bc_offsets(removed).cpu()
    i, gn = layout.intermediate_size, layout.n_groups * layout.state_size
    with torch.no_grad():
        for r0 in (layout.b_row0, layout.c_row0):
            mixer.in_proj.weight[r0 + flat] = 0
            if mixer.in_proj.bias is not None:
                mixer.in_proj.bias[r0 + flat] = 0
        for c0 in (i, i + gn):
            mixer.conv1d.weight[c0 + flat] = 0
            if mixer.conv1d.bias is not None:
                mixer.conv1d.bias[c0 + flat] = 0
