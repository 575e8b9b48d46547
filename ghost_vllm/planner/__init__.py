"""Capacity planning: how many sequences a state memory holds in vLLM, for a model and its pruned variants, before
an engine starts (``ghost-vllm plan``; ``ghost-vllm serve`` uses the same arithmetic for its start-up checks).

sizes.py parses memory sizes; arith.py mirrors vLLM's Mamba cache arithmetic; models.py reads what a model's config
says; quality.py looks up measured quality; plan.py builds the rows. Nothing here imports vLLM."""
