"""Hooks for the sequential pipeline, each removed in ``finally`` and checked to have fired:

- :func:`capture_block_inputs`: one dense forward that records every decoder block's input and keyword arguments
  (attention masks, rotary tables, Zamba2's original embeddings — whatever the family's model hands its blocks), so
  that any block can later be run on its own on pruned activations (:func:`run_block`);
- :func:`mixer_input`: what a block hands its Mamba2 mixer (after the norm; for a Zamba2 hybrid layer after the shared
  attention), without running the mixer;
- :func:`patched_mixers`: every mixer of a pure Mamba2 model through a forward of ours (:func:`masked_mixers`: our
  reference forward with a channel mask; ``ghost_vllm.loadtest.state_formats``: with the state stored narrower).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from ghost_vllm.mamba.layout import InProjLayout
from ghost_vllm.mamba.reference import mixer_forward

__all__ = ["PROPAGATE_WINDOWS", "BlockCall", "capture_block_inputs", "run_block", "mixer_input", "patched_mixers", "masked_mixers"]


# transformers' torch path materialises chunk-sized intermediates that grow with the batch (for 16 windows of
# mamba2-130m more than a layer's weights); two windows at a time keep the transient small
PROPAGATE_WINDOWS = 2


@dataclass
class BlockCall:
    """Everything a model passes a decoder block besides its hidden states (positional extras such as Zamba2's
    original embeddings, then keyword arguments: masks, rotary tables, position ids)."""

    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.args or self.kwargs)


class _Stop(Exception):
    """Raised by a hook once it has what it needs (the rest of the forward is not computed)."""


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def run_block(block: torch.nn.Module, hidden: torch.Tensor, call: BlockCall) -> torch.Tensor:
    """``block(hidden, *call.args, **call.kwargs)``'s hidden states (a tensor, or a tuple led by one)."""
    out = block(hidden, *call.args, **call.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def capture_block_inputs(model, blocks: Sequence[torch.nn.Module], batches: Sequence[torch.Tensor]
                         ) -> tuple[list[torch.Tensor], list[list[BlockCall]]]:
    """For each batch of token ids ``[b, T]``: the first block's input ``[b, T, hidden]`` and, per block, the other
    arguments the model passes it (:class:`BlockCall`). The forward stops at the last block."""
    firsts: list[torch.Tensor] = []
    kwargs: list[list[BlockCall]] = [[] for _ in blocks]
    last = len(blocks) - 1

    def make(i: int):
        def hook(module, args, kw):
            if i == 0:
                firsts.append(_hidden_arg(args, kw).detach().clone())
            kept = {k: v for k, v in kw.items() if k not in ("hidden_states", "past_key_values", "cache_params")}
            if "use_cache" in kept:
                kept["use_cache"] = False
            kwargs[i].append(BlockCall(tuple(args[1:]) if args else (), kept))
            if i == last:
                raise _Stop
        return hook

    handles = [b.register_forward_pre_hook(make(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        for ids in batches:
            try:
                model(ids, use_cache=False)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    if len(firsts) != len(batches) or any(len(k) != len(batches) for k in kwargs):
        raise RuntimeError("capture_block_inputs: a block was never called with its inputs; the model's forward "
                           "bypassed its decoder blocks")
    return firsts, [list(k) for k in kwargs]


@torch.no_grad()
def mixer_input(block: torch.nn.Module, mixer: torch.nn.Module, hidden: torch.Tensor, call: BlockCall
                ) -> torch.Tensor:
    """The tensor ``block`` hands ``mixer`` for input ``hidden`` (the mixer itself does not run)."""
    seen: list[torch.Tensor] = []

    def hook(module, args, kw):
        seen.append(_hidden_arg(args, kw))
        raise _Stop

    handle = mixer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        block(hidden, *call.args, **call.kwargs)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"mixer_input: {type(block).__name__} never called its mixer")
    return seen[0]


# forward(i, mixer, layout, hidden [b, T, hidden]) -> [b, T, hidden]: what mixer i computes while patched
MixerForward = Callable[[int, torch.nn.Module, InProjLayout, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def patched_mixers(model, forward: MixerForward, name: str) -> Iterator[None]:
    """While active, every mixer of a pure Mamba2 model computes ``forward(i, mixer, layout, hidden)`` instead of its
    own forward (``layout`` at the mixer's own state size, so per-layer budgets are honoured); full-sequence forwards
    only. The class forwards come back in ``finally``; a mixer that never ran is an error (a fused path bypassed it)."""
    base = InProjLayout.from_config(model.config)
    layers = model.backbone.layers
    fired = [0] * len(layers)

    def make(i: int, mixer):
        layout = base.with_state_size(int(getattr(mixer, "ssm_state_size", base.state_size)))

        def patched(hidden_states, cache_params=None, attention_mask=None, **kwargs):
            if cache_params is not None or attention_mask is not None:
                raise AssertionError(f"{name} supports full-sequence forwards without cache or padding only")
            fired[i] += 1
            return forward(i, mixer, layout, hidden_states).to(hidden_states.dtype)

        return patched

    try:
        for i, layer in enumerate(layers):
            layer.mixer.forward = make(i, layer.mixer)
        yield
    finally:
        for layer in layers:
            if "forward" in vars(layer.mixer):
                del layer.mixer.forward  # back to the class method
    missing = [i for i, n in enumerate(fired) if n == 0]
    if missing:
        raise RuntimeError(f"{name}: mixers of layers {missing} never ran; a fused kernel path bypassed them")


@contextlib.contextmanager
def masked_mixers(model, masks: list[torch.Tensor], chunked: bool = True) -> Iterator[None]:
    """While active, mixer ``l`` computes with B and C multiplied by ``masks[l] [G, N]`` (differentiable)."""
    if len(masks) != len(model.backbone.layers):
        raise AssertionError(f"{len(masks)} masks for {len(model.backbone.layers)} layers")

    def forward(i, mixer, layout, hidden):
        return mixer_forward(mixer, layout, hidden, mask=masks[i], chunked=chunked)

    with patched_mixers(model, forward, "masked_mixers"):
        yield
