"""``GhostInt8MambaMixer2``: vLLM's Mamba2 mixer with its SSM state cached as int8 + one float32 scale per head
(the format of :mod:`ghost_vllm.mamba.int8_state`), for a checkpoint or a serve-time override that sets
``ghost_state_dtype: int8``.

The page of a layer holds three states instead of two (``MambaSpec`` takes tuples of shapes and dtypes, and
``MambaBase.bind_kv_cache`` slices them out of the page in order)::

    conv  [conv_dim/tp, K-1]  model dtype      (unchanged)
    q     [H/tp, P, N_l]      int8
    scale [H/tp]              float32

so the engine allocates ``conv + H·P·N_l + 4·H`` bytes per layer and sequence, as ``ghost-vllm plan`` prices it.
:meth:`conv_ssm_forward` replaces the stock one (``vllm/model_executor/layers/mamba/mamba_mixer2.py``,
``MambaMixer2.conv_ssm_forward``) for the paths a served ghost checkpoint runs — prefill (chunked SSD, initial states
read from the cache, final states written) and one-token decode — and reads/writes the int8 format around vLLM's
own kernels:

* CPU: the batch's states are gathered and dequantized to float32, vLLM's compiled state update / chunked scan run on
  them, and the result is quantized back (``ghost_vllm.mamba.int8_state``);
* GPU: :func:`ghost_vllm.kernels.int8_state.int8_state_update` loads int8 + scale, updates in float32 and stores
  int8 + scale in one pass (no float32 copy of the batch's states); the prefill boundary goes through
  ``int8_dequantize_states`` / ``int8_quantize_states_`` around vLLM's chunked SSD kernel.

Another vLLM version, prefix caching ("align" mode), speculative decoding and ReplaySSM are refused by
:func:`check_int8_engine` in vLLM's front-end (the plugin's config-map class) and again at model build;
``ghost-vllm serve`` refuses the flags before vLLM starts (:mod:`ghost_vllm.plugin.preflight`).
"""

from __future__ import annotations

import torch
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.mamba import mamba_mixer2 as stock
from vllm.platforms import current_platform
from vllm.v1.attention.backends.utils import NULL_BLOCK_ID, PAD_SLOT_ID

from ghost_vllm.mamba.int8_state import dequantize, quantize
from ghost_vllm.plugin.mixer import GhostMambaMixer2

__all__ = ["GhostInt8MambaMixer2", "INT8_VLLM_VERSIONS", "check_int8_engine"]

# the vLLM versions whose MambaMixer2.conv_ssm_forward / MambaBase.bind_kv_cache / kernel signatures this mixer was
# written against (0.32.0 run here; 0.33.0 read from its sources: same calls, its SSD scan still returns the final
# states when no final_states_out is given)
INT8_VLLM_VERSIONS = ("0.32.0", "0.33.0")


def _unsupported(vllm_config) -> str | None:
    """Why this engine configuration cannot run the int8 state, or None."""
    cache = vllm_config.cache_config
    if getattr(cache, "mamba_cache_mode", "none") not in ("none", None):
        return "prefix caching (Mamba cache mode 'align') is not supported with the int8 state; pass --no-enable-prefix-caching"
    if getattr(cache, "use_replayssm", False):
        return "ReplaySSM is not supported with the int8 state; drop --use-replayssm"
    if getattr(vllm_config, "speculative_config", None) is not None:
        return "speculative decoding is not supported with the int8 state; drop --speculative-config"
    return None


def check_int8_engine(vllm_config) -> None:
    """Refuse (one line) an engine the int8 state cannot run in: another vLLM version, or a configuration
    :func:`_unsupported` names. Called in the front-end (the config-map class) and again at
    model build (a bypassed config map)."""
    import vllm

    version = str(vllm.__version__).split("+")[0]
    if version not in INT8_VLLM_VERSIONS:
        raise ValueError(f"ghost int8 SSM state: written for vLLM {' / '.join(INT8_VLLM_VERSIONS)}, this is vLLM "
                         f"{vllm.__version__}; serve with a float32/bfloat16 state (drop ghost_state_dtype) or install "
                         f"a supported vLLM")
    problem = _unsupported(vllm_config)
    if problem:
        raise ValueError(f"ghost int8 SSM state: {problem}")


def _null_padding(idx: torch.Tensor) -> torch.Tensor:
    """Cache lines with vLLM's padding entries (PAD_SLOT_ID) pointed at the null block, which the kernels skip."""
    return torch.where(idx == PAD_SLOT_ID, torch.full_like(idx, NULL_BLOCK_ID), idx)


class GhostInt8MambaMixer2(GhostMambaMixer2):
    """A ``MambaMixer2`` whose SSM cache is (int8 state, float32 per-head scales). Built as the stock mixer, then
    its class swapped (it adds no parameters)."""

    def get_state_dtype(self) -> tuple[torch.dtype, ...]:
        conv = super().get_state_dtype()[0]
        return conv, torch.int8, torch.float32

    def get_state_shape(self) -> tuple[tuple[int, ...], ...]:
        conv, ssm = super().get_state_shape()[:2]
        return conv, ssm, ssm[:1]

    def _warmup_ssd_kernels(self, projected_states: torch.Tensor) -> None:
        # the chunked scan runs with float32 states here (the warm-up would otherwise tune for an int8 state dtype)
        int8_dtypes = self.get_state_dtype
        self.get_state_dtype = lambda: (int8_dtypes()[0], torch.float32)  # type: ignore[method-assign]
        try:
            super()._warmup_ssd_kernels(projected_states)
        finally:
            del self.get_state_dtype

    # -- the forward ---------------------------------------------------------------------------------------------

    def conv_ssm_forward(self, projected_states: torch.Tensor, output: torch.Tensor):
        hidden_states_B_C, dt = torch.split(projected_states[..., self.tped_intermediate_size:],
                                            [self.tped_conv_size, self.tped_dt_size], dim=-1)
        raw = get_forward_context().attn_metadata
        meta = raw.get(self.prefix) if isinstance(raw, dict) else None
        if meta is None:  # profile run: as the stock mixer
            self._warmup_ssd_kernels(projected_states)
            hidden_states_B_C = hidden_states_B_C.transpose(0, 1).clone().transpose(0, 1).contiguous()
            hidden_states, _B, _C = self.split_hidden_states_B_C_fn(hidden_states_B_C)
            return hidden_states
        if getattr(meta, "checkpoint_chunk_idx", None) is not None or self.num_spec > 0 or self.use_replayssm:
            raise RuntimeError("ghost int8 SSM state: prefix-caching checkpoints, speculative decoding and ReplaySSM "
                               "are not supported; serve without them")
        conv_state = self.kv_cache[0] if stock.is_conv_state_dim_first() else self.kv_cache[0].transpose(-1, -2)
        q_state, scales = self.kv_cache[1], self.kv_cache[2]

        n_p, n_d = meta.num_prefill_tokens, meta.num_decode_tokens
        xbc_d, xbc_p = torch.split(hidden_states_B_C[: n_d + n_p], [n_d, n_p], dim=0)
        dt_d, dt_p = torch.split(dt[: n_d + n_p], [n_d, n_p], dim=0)
        out_d, out_p = torch.split(output[: n_d + n_p], [n_d, n_p], dim=0)
        if meta.num_prefills > 0:
            self._prefill(meta, conv_state, q_state, scales, xbc_p, dt_p, out_p)
        if meta.num_decodes > 0:
            self._decode(meta, conv_state, q_state, scales, xbc_d, dt_d, out_d)

    def _prefill(self, meta, conv_state, q_state, scales, xbc, dt, out) -> None:
        n_tok = meta.num_prefill_tokens
        idx = meta.state_indices_tensor_p  # [n] cache line per prefill
        xbc = stock.causal_conv1d_fn(xbc.transpose(0, 1), self.conv_weights, self.conv1d.bias,
                                     activation=self.activation, conv_states=conv_state,
                                     has_initial_state=meta.has_initial_states_p, cache_indices=idx, metadata=meta,
                                     query_start_loc=meta.query_start_loc_p).transpose(0, 1)[:n_tok]
        x, B, C = self.split_hidden_states_B_C_fn(xbc)
        initial = None
        if meta.has_initial_states_p is not None and meta.prep_initial_states:
            initial = torch.where(meta.has_initial_states_p[:, None, None, None],
                                  self._load_states(q_state, scales, idx), 0.0)  # [n, H, P, N] float32
        final = stock.mamba_chunk_scan_combined_varlen(
            x.view(n_tok, self.num_heads // self.tp_size, self.head_dim), dt, self.A,
            B.view(n_tok, self.n_groups // self.tp_size, -1), C.view(n_tok, self.n_groups // self.tp_size, -1),
            chunk_size=meta.chunk_size, D=self.D, z=None, dt_bias=self.dt_bias, seq_idx=meta.seq_idx_p,
            cu_seqlens=meta.query_start_loc_p, cu_chunk_seqlens=meta.cu_chunk_seqlen_p,
            last_chunk_indices=meta.last_chunk_indices_p, initial_states=initial, return_intermediate_states=False,
            dt_softplus=True, dt_limit=(0.0, float("inf")), out=out.view(n_tok, -1, self.head_dim),
            state_dtype=torch.float32)
        self._store_states(final.float(), q_state, scales, idx, scratch=True)

    def _decode(self, meta, conv_state, q_state, scales, xbc, dt, out) -> None:
        lines = meta.state_indices_tensor_d  # [b] or [b, 1]: the cache line per decode (no speculative tokens)
        xbc = stock.causal_conv1d_update(xbc, conv_state, self.conv_weights, self.conv1d.bias, self.activation,
                                         conv_state_indices=lines, num_accepted_tokens=meta.num_accepted_tokens,
                                         query_start_loc=meta.query_start_loc_d, max_query_len=lines.size(-1))
        idx = lines.reshape(-1) if lines.dim() == 1 or lines.size(-1) == 1 else lines[:, 0]
        x, B, C = self.split_hidden_states_B_C_fn(xbc)
        H, P, G = self.num_heads // self.tp_size, self.head_dim, self.n_groups // self.tp_size
        x, B, C = x.view(-1, H, P), B.view(-1, G, B.shape[1] // G), C.view(-1, G, C.shape[1] // G)
        out = out.view(meta.num_decode_tokens, -1, P)
        if not current_platform.is_cpu():
            from ghost_vllm.kernels.int8_state import int8_state_update

            int8_state_update(q_state, scales, x, dt, self.A, B, C, self.D, self.dt_bias,
                              state_batch_indices=_null_padding(idx), out=out, null_block_id=NULL_BLOCK_ID,
                              dt_softplus=True)
            return
        # CPU: vLLM's compiled update on a float32 copy of the batch's states (row 0 stands for the null block, which
        # the op skips), then quantized back
        b = idx.size(0)
        work = torch.empty((b + 1, H, P, self.ssm_state_size), dtype=torch.float32, device=x.device)
        work[0].zero_()
        self._load_states(q_state, scales, idx, out=work[1:])
        rows = torch.arange(1, b + 1, dtype=idx.dtype, device=idx.device)
        stock.selective_state_update(
            work, x, dt[:, :, None].expand(-1, -1, P),
            self.A[:, None, None].expand(-1, P, self.ssm_state_size).to(torch.float32), B, C,
            self.D[:, None].expand(-1, P), self.dt_bias[:, None].expand(-1, P), dt_softplus=True,
            state_batch_indices=rows, dst_state_batch_indices=rows, out=out)
        self._store_states(work[1:], q_state, scales, idx, scratch=True)

    @staticmethod
    def _load_states(q_state: torch.Tensor, scales: torch.Tensor, idx: torch.Tensor,
                     out: torch.Tensor | None = None) -> torch.Tensor:
        """float32 ``[n, H, P, N]`` of cache lines ``idx`` (padding / null entries read the null block)."""
        safe = _null_padding(idx)
        if not current_platform.is_cpu():
            from ghost_vllm.kernels.int8_state import int8_dequantize_states

            return int8_dequantize_states(q_state, scales, safe, null_block_id=NULL_BLOCK_ID)
        return dequantize(q_state[safe.long()], scales[safe.long()], out=out)

    @staticmethod
    def _store_states(states: torch.Tensor, q_state: torch.Tensor, scales: torch.Tensor, idx: torch.Tensor,
                      scratch: bool = False) -> None:
        """Quantize ``states [n, H, P, N]`` into cache lines ``idx``; padding / null entries write nothing
        (``scratch``: ``states`` may be overwritten)."""
        if not current_platform.is_cpu():
            from ghost_vllm.kernels.int8_state import int8_quantize_states_

            int8_quantize_states_(states, q_state, scales, _null_padding(idx), null_block_id=NULL_BLOCK_ID)
            return
        keep = (idx != PAD_SLOT_ID) & (idx != NULL_BLOCK_ID)
        if bool(keep.all()):
            q, s = quantize(states, overwrite=scratch)
            lines = idx.long()
        else:
            q, s = quantize(states[keep], overwrite=True)
            lines = idx[keep].long()
        q_state.index_copy_(0, lines, q)
        scales.index_copy_(0, lines, s)
