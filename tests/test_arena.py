"""The arena (core/arena.h): a pass that asks for the blocks of the pass before gets the same
memory back (no chunk made, no page touched for the first time), blocks never overlap, and a pass
that outgrows the chunks it began with is merged into one chunk at the next reset. Large blocks
(the arena's chunks, the parameters and gradients) are advised to transparent huge pages."""
import ctypes
import os

import pytest

import herbs

from ckernels import LIB
from test_factored import Arena

LIB.herbs_arena_alloc.restype = ctypes.c_void_p
LIB.herbs_arena_alloc.argtypes = [ctypes.POINTER(Arena), ctypes.c_size_t]
LIB.herbs_arena_reset.argtypes = [ctypes.POINTER(Arena)]
MB = 1 << 20


def chunk_count(arena):
    class Chunk(ctypes.Structure):  # core/arena.c
        pass

    Chunk._fields_ = [("next", ctypes.POINTER(Chunk)), ("base", ctypes.c_char_p), ("size", ctypes.c_size_t),
                      ("used", ctypes.c_size_t)]
    n, c = 0, ctypes.cast(arena.chunks, ctypes.POINTER(Chunk))
    while c:
        n, c = n + 1, c.contents.next
    return n


def one_pass(arena, sizes):
    assert LIB.herbs_arena_reset(ctypes.byref(arena)) == 0
    blocks = [(LIB.herbs_arena_alloc(ctypes.byref(arena), s), s) for s in sizes]
    assert all(p and p % 64 == 0 for p, _ in blocks)
    ends = sorted((p, p + s) for p, s in blocks)
    assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:])), "blocks overlap"
    return [p for p, _ in blocks]


def test_the_same_pass_again_gets_the_same_blocks():
    arena = Arena()
    LIB.herbs_arena_init(ctypes.byref(arena))
    try:
        sizes = [10 * MB, 60 * MB, 3, 70 * MB, 40 * MB, 1 * MB]  # spills over several chunks
        first = one_pass(arena, sizes)
        chunks = chunk_count(arena)
        assert chunks > 1
        for _ in range(2):
            assert one_pass(arena, sizes) == first
            assert chunk_count(arena) == chunks
        assert one_pass(arena, sizes[:3]) == first[:3]  # a pass that stops early: the same places
    finally:
        LIB.herbs_arena_free(ctypes.byref(arena))


def test_a_pass_that_outgrows_its_chunks_is_merged_at_the_next_reset():
    arena = Arena()
    LIB.herbs_arena_init(ctypes.byref(arena))
    try:
        one_pass(arena, [10 * MB, 60 * MB])
        assert chunk_count(arena) == 2
        one_pass(arena, [100 * MB])  # fits in neither: a third chunk, and a merge due
        assert chunk_count(arena) == 3
        one_pass(arena, [100 * MB])  # one chunk of the largest pass so far
        assert chunk_count(arena) == 1
        one_pass(arena, [100 * MB, 20 * MB])  # outgrown again ...
        assert chunk_count(arena) == 2
        again = one_pass(arena, [100 * MB, 20 * MB])  # ... merged into one of 120 MB ...
        assert chunk_count(arena) == 1
        assert one_pass(arena, [100 * MB, 20 * MB]) == again  # ... which holds it from then on
        assert chunk_count(arena) == 1
    finally:
        LIB.herbs_arena_free(ctypes.byref(arena))


def vma_flags(address):
    """The VmFlags of the mapping of this process that holds `address` (/proc/self/smaps)."""
    inside = False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(v, 16) for v in head.split("-"))
            inside = start <= address < end
        elif inside and head == "VmFlags:":
            return line.split()[1:]
    raise AssertionError("no mapping holds %#x" % address)


@pytest.mark.skipif(not os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled"),
                    reason="needs Linux with transparent huge pages (the advice is what is checked)")
def test_large_blocks_are_advised_to_huge_pages():
    # MADV_HUGEPAGE is hidden by -std=c11 without _DEFAULT_SOURCE: the advice was compiled out
    # once, silently, and the training step ran 3.6% slower on 4 KiB pages
    arena = Arena()
    LIB.herbs_arena_init(ctypes.byref(arena))
    try:
        chunk = LIB.herbs_arena_alloc(ctypes.byref(arena), 8 * MB)
        assert "hg" in vma_flags(chunk)
    finally:
        LIB.herbs_arena_free(ctypes.byref(arena))
    m = herbs.Model("swin_tiny_patch4_window7_224", num_classes=10)
    for block in (m.flat_parameters(), m.flat_gradients()):
        assert block.nbytes >= 4 * MB
        assert "hg" in vma_flags(block.__array_interface__["data"][0])
