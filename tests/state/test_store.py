"""The application's state store, without Redis.

Aspects: every write bumps the version and stamps its key; ``changes_since`` lists exactly the
keys written and the tombstones laid after a version; deleting a missing key bumps nothing;
``freeze`` holds ``set`` and ``delete`` of other threads until ``resume`` (the writer is seen
asking the frozen flag and blocking on it, not guessed from a timeout), while ``apply`` and
``apply_delete`` (the target's side) go through; a write that had passed the frozen check
before ``freeze`` must not land after it (it goes back to waiting); the digest depends on the
content only, not on the order of insertion, and differs when the content differs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from state_transfer.store import StateStore

WAIT_S = 5.0  # an upper bound for things that should happen at once, never a measured time


def test_versions_increase_per_write() -> None:
    store = StateStore()
    assert store.version == 0
    seen = [store.set("a", 1), store.set("b", 2), store.set("a", 3), store.delete("b")]
    assert seen == [1, 2, 3, 4]
    assert store.version == 4
    assert store.get("a") == 3 and "b" not in store and len(store) == 1


def test_changes_since_lists_writes_and_tombstones_after_a_version() -> None:
    store = StateStore()
    store.set("old", 1)
    store.set("gone-before", 1)
    store.delete("gone-before")
    mark = store.set("kept", 1)
    store.set("new", 2)
    store.set("old", 10)
    store.set("doomed", 3)
    store.delete("doomed")
    store.delete("kept")

    version, written, deleted = store.changes_since(mark)
    assert version == store.version
    assert sorted(written) == ["new", "old"]
    assert sorted(deleted) == ["doomed", "kept"]

    # from the start: every live key, and the tombstones of keys that existed
    _, written0, deleted0 = store.changes_since(0)
    assert sorted(written0) == ["new", "old"]
    assert sorted(deleted0) == ["doomed", "gone-before", "kept"]

    # nothing after the current version
    assert store.changes_since(version) == (version, [], [])


def test_a_key_written_again_after_its_delete_is_no_longer_a_tombstone() -> None:
    store = StateStore()
    store.set("k", 1)
    mark = store.delete("k")
    store.set("k", 2)
    _, written, deleted = store.changes_since(mark - 1)
    assert written == ["k"] and deleted == []


def test_delete_of_a_missing_key_does_not_bump() -> None:
    store = StateStore()
    store.set("a", 1)
    before = store.version
    assert store.delete("nope") == before
    assert store.version == before
    assert store.changes_since(before) == (before, [], [])
    store.apply_delete("nope")
    assert store.version == before


class _WatchedThaw:
    """Stands in for the store's thawed flag, saying when a writer is parked on it.

    A writer that asks a frozen store and would block sets ``news`` first: the test sees the
    writer parked instead of guessing it from a timeout. A writer that asks with a timeout
    has its first such wait expire at once (as it may on a loaded machine), so one that gives
    up and writes when its wait times out is caught every time, not only when it is slow.
    """

    def __init__(self, real: threading.Event, news: threading.Event) -> None:
        self.real = real
        self.news = news
        self.asked_frozen: list[bool] = []
        self.expired = False

    def wait(self, timeout: float | None = None) -> bool:
        frozen = not self.real.is_set()
        self.asked_frozen.append(frozen)
        if frozen and timeout is not None and not self.expired:
            self.expired = True
            return False
        if frozen:
            self.news.set()
        return self.real.wait(timeout)

    def set(self) -> None:
        self.real.set()

    def clear(self) -> None:
        self.real.clear()

    def is_set(self) -> bool:
        return self.real.is_set()


@pytest.mark.parametrize("op", ["set", "delete"])
def test_freeze_holds_writers_of_other_threads_until_resume(op: str) -> None:
    store = StateStore()
    store.set("k", "before")
    news, done = threading.Event(), threading.Event()
    gate = _WatchedThaw(store._thawed, news)
    store._thawed = gate  # type: ignore[assignment]
    frozen_at = store.freeze()
    assert store.frozen

    def write() -> None:
        if op == "set":
            store.set("k", "during")
        else:
            store.delete("k")
        done.set()
        news.set()

    threading.Thread(target=write, daemon=True).start()
    # the writer either asked the frozen flag (and is blocked on it) or went through
    assert news.wait(WAIT_S), f"{op} neither waited nor finished"
    assert not done.is_set(), f"{op} went through a frozen store"
    assert gate.asked_frozen[-1:] == [True], f"{op} did not find the store frozen"
    assert store.version == frozen_at and store.get("k") == "before"

    store.resume()
    assert not store.frozen
    assert done.wait(WAIT_S), f"{op} still blocked after resume"
    assert store.version == frozen_at + 1
    assert store.get("k") == ("during" if op == "set" else None)


def test_apply_and_apply_delete_work_while_frozen() -> None:
    store = StateStore()
    store.set("x", 1)
    store.freeze()

    def restore() -> None:
        store.apply("y", {"n": 2})
        store.apply("x", 3)
        store.apply_delete("x")

    with ThreadPoolExecutor(1) as pool:
        pool.submit(restore).result(timeout=WAIT_S)
    assert store.frozen
    assert store.get("y") == {"n": 2} and "x" not in store
    assert store.version == 4
    _, written, deleted = store.changes_since(1)
    assert written == ["y"] and deleted == ["x"]
    store.resume()


class _PreemptedThaw(_WatchedThaw):
    """A writer that has just passed ``wait()`` the first time stops there until told to go on.

    That is where a thread switch can happen in real life; here it happens every time, so the
    race is shown deterministically. Later calls only report (see :class:`_WatchedThaw`).
    """

    def __init__(self, real: threading.Event, news: threading.Event) -> None:
        super().__init__(real, news)
        self.passed = threading.Event()
        self.go = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        if self.passed.is_set():
            return super().wait(timeout)
        ok = self.real.wait(timeout)
        self.passed.set()
        self.go.wait(WAIT_S)
        return ok


def test_no_write_lands_after_freeze_returned() -> None:
    store = StateStore()
    store.set("k", "before")
    news = threading.Event()
    gate = _PreemptedThaw(store._thawed, news)
    store._thawed = gate  # type: ignore[assignment]

    with ThreadPoolExecutor(1) as pool:
        writer = pool.submit(store.set, "k", "late")
        writer.add_done_callback(lambda _: news.set())
        assert gate.passed.wait(WAIT_S)
        frozen_at = store.freeze()
        # the final delta of a move is taken here, under the freeze
        final = store.changes_since(frozen_at)
        gate.go.set()
        try:
            # the writer either went back to the frozen flag (and blocks there) or landed
            assert news.wait(WAIT_S), "the writer neither waited again nor finished"
            assert not writer.done(), "a write landed after freeze() returned"
            assert gate.asked_frozen[-1:] == [True]
            assert store.version == frozen_at
            assert store.changes_since(frozen_at) == final
            assert store.get("k") == "before"
        finally:
            store.resume()
            writer.result(timeout=WAIT_S)


def test_digest_ignores_insertion_order() -> None:
    a, b = StateStore(), StateStore()
    items = [("x", 1), ("y", b"\x00\x01"), ("z", {"n": [1, 2, "s"]}), ("w", None)]
    for k, v in items:
        a.set(k, v)
    for k, v in reversed(items):
        b.set(k, v)
    b.set("extra", 1)
    b.delete("extra")
    assert a.version != b.version
    assert a.digest() == b.digest()


@pytest.mark.parametrize("change", [
    lambda s: s.set("x", 2),            # another value
    lambda s: s.set("x", "1"),          # another type
    lambda s: s.set("extra", 1),        # one key more
    lambda s: s.delete("y"),            # one key less
])
def test_digest_differs_for_different_content(change: Callable[[StateStore], object]) -> None:
    a, b = StateStore(), StateStore()
    for s in (a, b):
        s.set("x", 1)
        s.set("y", "v")
    assert a.digest() == b.digest()
    change(b)
    assert a.digest() != b.digest()


def test_digest_differs_when_a_value_moves_to_another_key() -> None:
    a, b = StateStore(), StateStore()
    a.set("p", 1)
    a.set("q", 2)
    b.set("p", 2)
    b.set("q", 1)
    assert a.digest() != b.digest()


def test_digest_is_unambiguous() -> None:
    # small ints pack to one byte (50 -> b"2"), so the bytes hashed for both are b"user:12x\x01"
    a, b = StateStore(), StateStore()
    a.set("user:1", 50)
    a.set("x", 1)
    b.set("user:12x", 1)
    assert a.digest() != b.digest()
