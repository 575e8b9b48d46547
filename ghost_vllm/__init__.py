"""ghost_vllm: prune the SSM state of Mamba2 models with GHOST and serve the result with vLLM.

``import ghost_vllm`` never imports vLLM (nor torch); the plugin lives in ``ghost_vllm.plugin``. The library entry is
:func:`ghost_vllm.prune` (:mod:`ghost_vllm.pruning`), loaded on first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "prune"]


def __getattr__(name: str):
    if name == "prune":
        from ghost_vllm.pruning import prune

        return prune
    raise AttributeError(f"module 'ghost_vllm' has no attribute {name!r}")
