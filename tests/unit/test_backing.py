"""Block memory (``agents/backing.py``): memfds within the descriptor budget, anonymous memory
past it and for small blocks, and a freed memfd's pages given back at once."""

from __future__ import annotations

import mmap

import pytest

from agents import backing
from agents.backing import MEMFDS, SHARED_MIN, block_memory, memfd_budget, release_memfd


@pytest.fixture
def budget():
    saved = MEMFDS.budget, MEMFDS.open
    MEMFDS.budget, MEMFDS.open = 2, 0
    yield MEMFDS
    MEMFDS.budget, MEMFDS.open = saved


def test_blocks_take_memfds_up_to_the_budget_then_anonymous_memory(budget):
    made = [block_memory(SHARED_MIN, shared=True) for _ in range(3)]
    assert [fd >= 0 for _, fd in made] == [True, True, False] and budget.open == 2
    small, fd = block_memory(SHARED_MIN - 1, shared=True)
    assert fd == -1
    off, fd = block_memory(SHARED_MIN, shared=False)
    assert fd == -1
    for buf, fd in made:
        buf.close()
        release_memfd(fd, SHARED_MIN, punch=True)
    assert budget.open == 0
    for buf in (small, off):
        buf.close()


def test_a_freed_memfds_pages_go_back_while_another_mapping_lives(budget):
    buf, fd = block_memory(SHARED_MIN, shared=True)
    buf[:] = b"\xab" * SHARED_MIN
    other = mmap.mmap(fd, SHARED_MIN, flags=mmap.MAP_SHARED)  # (as a client maps it)
    buf.close()
    release_memfd(fd, SHARED_MIN, punch=True)
    assert other[:: 4096] == bytes(SHARED_MIN // 4096)
    other.close()


def test_the_budget_is_what_connections_and_the_reserve_leave():
    assert memfd_budget(20_000, 10_000, 256) == 9_744
    assert memfd_budget(1024, 768, 256) == 0
    assert memfd_budget(-1, 10_000, 256) == backing.memfd_budget(-1, 0, 0) > 100_000
