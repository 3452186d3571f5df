"""The unified KV cache's bookkeeping: which cells each llama.cpp sequence holds, mirrored in Python.

llama.cpp's unified cache is one pool of cells; a cell holds one token's keys and values and the set of sequences
that see it. `seq_cp` within the pool adds a sequence to existing cells (no copy) and `seq_rm` removes it; a
cell is free once no sequence holds it. llama.cpp does not report how many cells are in use, so this class keeps
the same sets as reference counts: the scheduler admits a request only when its cells will fit (bounded memory,
no mid-decode failure), and knows how many cells evicting a cached prefix would free.
"""

from __future__ import annotations

import itertools

import llama_cpp


class KVCache:
    """Sequence ids and cell reference counts of one context's unified cache. Engine thread only."""

    def __init__(self, memory: llama_cpp.llama_memory_t, capacity: int, n_seqs: int) -> None:
        self.memory = memory
        self.capacity = capacity
        self._free_ids = list(range(n_seqs - 1, -1, -1))  # pop() hands out 0, 1, 2, ...
        self._cells: dict[int, list[int]] = {}  # seq id -> cell ids by position
        self._refs: dict[int, int] = {}  # cell id -> number of sequences holding it
        self._next_cell = itertools.count()

    # -- sequence ids ---------------------------------------------------------------------------------------

    @property
    def free_ids(self) -> int:
        return len(self._free_ids)

    def acquire(self) -> int:
        seq_id = self._free_ids.pop()
        self._cells[seq_id] = []
        return seq_id

    def release(self, seq_id: int) -> None:
        """Free every cell of `seq_id` that no other sequence holds, and hand the id back."""
        self.truncate(seq_id, 0)
        del self._cells[seq_id]
        self._free_ids.append(seq_id)

    # -- cells ----------------------------------------------------------------------------------------------

    @property
    def used(self) -> int:
        return len(self._refs)

    @property
    def free(self) -> int:
        return self.capacity - len(self._refs)

    def length(self, seq_id: int) -> int:
        return len(self._cells[seq_id])

    def appended(self, seq_id: int, n: int) -> None:
        """`n` new positions of `seq_id` were decoded into fresh cells."""
        fresh = [next(self._next_cell) for _ in range(n)]
        for cell in fresh:
            self._refs[cell] = 1
        self._cells[seq_id].extend(fresh)

    def share(self, src: int, dst: int, n: int) -> None:
        """Let the empty sequence `dst` see the first `n` positions of `src` (the same cells, no copy)."""
        assert not self._cells[dst], "share into an empty sequence only"
        llama_cpp.llama_memory_seq_cp(self.memory, src, dst, 0, n)
        cells = self._cells[src][:n]
        for cell in cells:
            self._refs[cell] += 1
        self._cells[dst] = cells

    def truncate(self, seq_id: int, n: int) -> None:
        """Keep the first `n` positions of `seq_id`; the cells after them leave the sequence."""
        cells = self._cells[seq_id]
        if len(cells) > n:
            if not llama_cpp.llama_memory_seq_rm(self.memory, seq_id, n, -1):
                raise RuntimeError(f"llama.cpp refused to remove positions >= {n} of sequence {seq_id}")
            for cell in cells[n:]:
                left = self._refs[cell] - 1
                if left:
                    self._refs[cell] = left
                else:
                    del self._refs[cell]
            del cells[n:]

    def exclusive(self, seq_id: int) -> int:
        """How many cells releasing `seq_id` would free."""
        return sum(1 for cell in self._cells[seq_id] if self._refs[cell] == 1)
