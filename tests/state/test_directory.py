"""Directory mode, without Redis: a directory of files as a transferable state.

Aspects: ``changes_since(0)`` lists every file (nested ones too); a later call lists only the
files created or modified since, and the ones deleted; a call with no change lists nothing;
``encode``/``decode_apply`` copy files byte for byte into nested directories, and
``apply_delete`` removes them; a key leaving the root (``..``, absolute, through a symlink) is
a ValueError; after copying a tree through ``encode``/``decode_apply`` both digests are equal,
and they differ once one file differs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from state_transfer.directory import DirectoryState


def write(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def touch_later(root: Path, rel: str) -> None:
    """Make a modification visible whatever the file system's mtime granularity."""
    path = root / rel
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


TREE = {
    "top.txt": b"top",
    "a/one.bin": os.urandom(1000),
    "a/b/c/deep.json": b'{"x": 1}',
    "a/b/empty": b"",
    "z/last": b"z" * 70_000,
}


def make_tree(root: Path) -> None:
    for rel, data in TREE.items():
        write(root, rel, data)


def test_changes_since_zero_lists_all_files(tmp_path: Path) -> None:
    make_tree(tmp_path)
    state = DirectoryState(tmp_path)
    version, written, deleted = state.changes_since(0)
    assert version == 1 == state.version
    assert sorted(written) == sorted(TREE)
    assert deleted == []
    assert state.count() == len(TREE)


def test_a_later_call_lists_only_changed_new_and_deleted_files(tmp_path: Path) -> None:
    make_tree(tmp_path)
    state = DirectoryState(tmp_path)
    v1, _, _ = state.changes_since(0)

    write(tmp_path, "a/one.bin", b"rewritten, another size")
    touch_later(tmp_path, "a/one.bin")
    write(tmp_path, "a/b/new.txt", b"new")
    write(tmp_path, "fresh/dir/file", b"f")
    (tmp_path / "top.txt").unlink()
    (tmp_path / "a/b/c/deep.json").unlink()

    v2, written, deleted = state.changes_since(v1)
    assert v2 == v1 + 1
    assert sorted(written) == ["a/b/new.txt", "a/one.bin", "fresh/dir/file"]
    assert sorted(deleted) == ["a/b/c/deep.json", "top.txt"]

    v3, written, deleted = state.changes_since(v2)
    assert v3 == v2 + 1
    assert (written, deleted) == ([], [])


def test_a_same_size_rewrite_with_a_new_mtime_is_a_change(tmp_path: Path) -> None:
    write(tmp_path, "f", b"aaaa")
    state = DirectoryState(tmp_path)
    v1, _, _ = state.changes_since(0)
    write(tmp_path, "f", b"bbbb")
    touch_later(tmp_path, "f")
    _, written, _ = state.changes_since(v1)
    assert written == ["f"]


def test_encode_decode_apply_round_trip_with_nested_dirs(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src)
    source, target = DirectoryState(src), DirectoryState(dst)
    _, written, _ = source.changes_since(0)
    for key in written:
        data = source.encode(key)
        assert data is not None
        target.decode_apply(key, data)
    for rel, data in TREE.items():
        assert (dst / rel).read_bytes() == data
    # no temporary file is left behind
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file()) == sorted(TREE)
    assert target.count() == len(TREE)

    target.apply_delete("a/b/c/deep.json")
    target.apply_delete("a/b/c/deep.json")  # a second delete is harmless
    assert not (dst / "a/b/c/deep.json").exists()


def test_decode_apply_overwrites_an_existing_file(tmp_path: Path) -> None:
    write(tmp_path, "d/f", b"old content")
    state = DirectoryState(tmp_path)
    state.decode_apply("d/f", b"new")
    assert (tmp_path / "d/f").read_bytes() == b"new"


def test_encode_of_a_missing_file_is_none(tmp_path: Path) -> None:
    assert DirectoryState(tmp_path).encode("not/there") is None


@pytest.mark.parametrize("key", ["../x", "a/../../x", "../" + "escape/y", "/etc/passwd", ".",
                                 ""])
def test_a_key_leaving_the_root_is_refused(tmp_path: Path, key: str) -> None:
    root = tmp_path / "root"
    state = DirectoryState(root)
    with pytest.raises(ValueError, match="leaves the state directory"):
        state.decode_apply(key, b"evil")
    with pytest.raises(ValueError, match="leaves the state directory"):
        state.encode(key)
    with pytest.raises(ValueError, match="leaves the state directory"):
        state.apply_delete(key)
    assert not (tmp_path / "x").exists()


def test_a_key_through_a_symlink_leaving_the_root_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    state = DirectoryState(root)
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="leaves the state directory"):
        state.decode_apply("link/x", b"evil")
    assert not (outside / "x").exists()


def test_a_key_with_dotdot_inside_the_root_is_allowed(tmp_path: Path) -> None:
    state = DirectoryState(tmp_path)
    state.decode_apply("a/../b", b"ok")
    assert (tmp_path / "b").read_bytes() == b"ok"


def test_digest_equal_after_copying_the_tree(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src)
    source, target = DirectoryState(src), DirectoryState(dst)
    assert source.digest() != target.digest()
    _, written, _ = source.changes_since(0)
    for key in written:
        data = source.encode(key)
        assert data is not None
        target.decode_apply(key, data)
    assert source.digest() == target.digest()

    write(dst, "a/one.bin", b"different")
    assert source.digest() != target.digest()


def test_digest_is_unambiguous(tmp_path: Path) -> None:
    # both hash b"x1y2": file "x" holding b"1" and file "y" holding b"2", or "x" holding b"1y2"
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, "x", b"1")
    write(a, "y", b"2")
    write(b, "x", b"1y2")
    assert DirectoryState(a).digest() != DirectoryState(b).digest()
