"""``GhostMambaSpec``: the KV-cache spec of a Mamba2 layer in a checkpoint with per-layer state sizes.

Stock ``MambaSpec.is_uniform_with_collection`` requires equal page sizes, so layers with different N' fall through
to ``unify_kv_cache_spec_page_size``, which pads every page to the largest: the engine then allocates the dense
model's bytes and the saving disappears. A ``GhostMambaSpec`` is uniform with other ``GhostMambaSpec``\\ s that
differ only in their state shapes; vLLM then builds ONE ``UniformTypeKVCacheSpecs`` group whose block is
Σ_l page_l — exactly the bytes the layers need — through its own extension point (a ``MambaSpec`` subclass resolves
to ``MambaManager`` by the MRO of the KV-cache spec registry). The one worker-side gap is patched by
``ghost_vllm_patches.ssu_backend_uniform_type``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from vllm.v1.kv_cache_interface import KVCacheSpec, MambaSpec

__all__ = ["GhostMambaSpec", "ghost_spec"]


@dataclass(frozen=True)
class GhostMambaSpec(MambaSpec):
    def is_uniform_with_collection(self, kv_cache_specs: dict[str, KVCacheSpec]) -> bool:
        if self.page_size_padded is not None:  # padded pages (hybrid alignment): stock rules
            return super().is_uniform_with_collection(kv_cache_specs)
        return all(
            isinstance(spec, GhostMambaSpec) and replace(spec, shapes=self.shapes) == self
            for spec in kv_cache_specs.values()
        )


def ghost_spec(spec: MambaSpec) -> GhostMambaSpec:
    return GhostMambaSpec(**{f.name: getattr(spec, f.name) for f in fields(spec)})
