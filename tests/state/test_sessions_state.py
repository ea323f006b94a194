"""The session workload's initial state, made without a lab.

Aspects: ``fill`` makes the asked number of values, each of the workload's value size, all
different (each carries its index, and slices of the random pool start at different
offsets), keyed as the dirtying loop rewrites them; the values the loop writes afterwards
(the same maker, going on) differ from all of them.
"""

from __future__ import annotations

from dataplane.lab.workloads.sessions import BLOB, Values, fill
from state_transfer.store import StateStore


def test_fill_makes_distinct_values_of_the_value_size() -> None:
    store = StateStore()
    maker = fill(store, 300, Values())
    assert len(store) == 300
    values = [store.get(f"blob:{i:06d}") for i in range(300)]
    assert all(isinstance(v, bytes) and len(v) == BLOB for v in values)
    assert len(set(values)) == 300
    assert len({v[8:64] for v in values}) == 300  # not only the index differs
    later = {maker.next() for _ in range(50)}
    assert len(later) == 50 and not later & set(values)
