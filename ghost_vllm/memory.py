"""Process memory housekeeping for the layer-by-layer loop (glibc only; a no-op elsewhere)."""

from __future__ import annotations

__all__ = ["release_free_heap"]


def release_free_heap() -> None:
    """Hand glibc's freed-but-kept heap pages back to the OS after each layer: the layer's batch-sized temporaries
    (mixer inputs, propagation) are served from the heap once glibc's adaptive mmap threshold has grown, and that
    heap is not returned by itself, so RSS would ratchet up layer after layer with memory no longer in use."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # glibc only
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()
