"""ghost_vllm: prune the SSM state of Mamba2 models with GHOST and serve the result with vLLM.

``import ghost_vllm`` never imports vLLM; the plugin lives in ``ghost_vllm.plugin``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
