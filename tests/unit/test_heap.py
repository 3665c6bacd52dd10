"""facepass.heap: the allocator settings the model processes run with."""

from __future__ import annotations

import ctypes

from facepass.heap import HeapTrimmer, keep_buffers_in_heap


def test_heap_settings_apply_on_glibc() -> None:
    try:
        ctypes.CDLL("libc.so.6")
    except OSError:
        assert keep_buffers_in_heap() is False
        return
    assert keep_buffers_in_heap() is True


def test_trimmer_trims_every_n_photos() -> None:
    trimmer = HeapTrimmer(every=3)
    for _ in range(7):
        trimmer.tick()
    assert trimmer.count == 7
