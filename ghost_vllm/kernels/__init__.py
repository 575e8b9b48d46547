"""vLLM's Mamba2 GPU kernels (Triton) checked at every state size the product emits.

``python -m ghost_vllm.kernels`` runs them — under the Triton interpreter here (``TRITON_INTERPRET=1``), compiled on a
GPU — against the project's reference scan and writes a JSON report (see :mod:`ghost_vllm.kernels.__main__`). The
loader reads vLLM's kernel files without importing vLLM, so run it in a process of its own.
"""
