"""facepass.vision.heap: the allocator settings the model processes run with."""

from __future__ import annotations

import ctypes

from facepass.vision.heap import HeapTrimmer, keep_buffers_in_heap


def test_heap_settings_apply_on_glibc() -> None:
    try:
        ctypes.CDLL("libc.so.6")
    except OSError:
        assert keep_buffers_in_heap() is False
        return
    assert keep_buffers_in_heap() is True


def test_trimmer_waits_for_idle_or_every_n_photos() -> None:
    trimmer = HeapTrimmer(every=5)
    for _ in range(8):  # eight photos in flight at once
        trimmer.start()
    for _ in range(4):
        trimmer.done()
    assert trimmer.trims == 0  # busy, fewer than `every` photos since the last trim
    trimmer.done()
    assert trimmer.trims == 1  # the fifth photo while busy
    for _ in range(2):
        trimmer.done()
    assert trimmer.trims == 1
    trimmer.done()
    assert (trimmer.active, trimmer.trims) == (0, 2)  # idle: trimmed at once
    trimmer.start()
    trimmer.done()
    assert trimmer.trims == 3


def test_a_photo_block_counts_as_one_photo_even_when_it_raises() -> None:
    trimmer = HeapTrimmer(every=100)
    try:
        with trimmer.photo():
            assert trimmer.active == 1
            raise ValueError("bad photo")
    except ValueError:
        pass
    assert (trimmer.active, trimmer.trims) == (0, 1)
