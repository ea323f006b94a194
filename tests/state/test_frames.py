"""Frames, without Redis: sealing, sequencing, splitting and reassembly.

Aspects: a sealed frame opens to the same frame; flipping any byte of it (header, nonce,
ciphertext or tag) is a FrameError, never a silently different frame or another exception; a
frame sealed for one move does not open for another move under the same key, nor under
another key; a well-formed frame with a nonce of a bad length is a FrameError too; a key of
the wrong length is refused; the Sequencer rejects gaps and replays; ``split`` cuts at the
chunk size, gives one empty piece for empty data, and joins back; the Reassembler returns a
value from its chunks in order and rejects a chunk out of order or a value interleaved with
another; a frame sealed in its two parts (header, sealed payload: what the sender writes
without joining them) is the same frame.
"""

from __future__ import annotations

import os

import msgpack
import pytest

from state_transfer.errors import FrameError, StateTransferError
from state_transfer.frames import (
    CHUNK_SIZE,
    DELETE,
    END,
    HEADER_LEN,
    KEY_BYTES,
    PUT,
    Frame,
    FrameCodec,
    Reassembler,
    Sequencer,
    new_key,
    split,
)


def frame(seq: int = 1, *, kind: str = PUT, key: str = "k", chunk: int = 0, count: int = 1,
          payload: bytes = b"value", rnd: int = 1) -> Frame:
    return Frame(seq=seq, round=rnd, kind=kind, key=key, chunk=chunk, count=count,
                 payload=payload)


@pytest.mark.parametrize("f", [
    frame(),
    frame(7, kind=DELETE, key="gone", payload=b""),
    frame(8, kind=END, key="", payload=b"\x81\xa6frames\x02"),
    frame(9, key="big", chunk=2, count=3, payload=os.urandom(CHUNK_SIZE)),
    frame(2**40, key="ключ/ü", rnd=5, payload=b"\x00" * 3),
])
def test_seal_open_round_trip(f: Frame) -> None:
    codec = FrameCodec(new_key(), "move-1")
    blob = codec.seal(f)
    assert codec.open(blob) == f
    if len(f.payload) >= 16:
        assert f.payload not in blob  # the payload travels encrypted


def test_the_target_opens_with_its_own_codec_under_the_same_key() -> None:
    key, f = new_key(), frame(4, payload=b"secret state " * 10)
    source, target = FrameCodec(key, "move-1"), FrameCodec(key, "move-1")
    assert target.open(source.seal(f)) == f
    assert b"secret state" not in source.seal(f)


@pytest.mark.parametrize("payload", [b"", b"short", os.urandom(300)])
def test_flipping_any_byte_is_a_frame_error(payload: bytes) -> None:
    codec = FrameCodec(new_key(), "move-1")
    blob = codec.seal(frame(3, key="some/key", chunk=1, count=2, payload=payload))
    for i in range(len(blob)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(blob)
            bad[i] ^= mask
            with pytest.raises(FrameError):
                codec.open(bytes(bad))


@pytest.mark.parametrize("blob", [b"", b"\x00", b"\x93\x01\x02\x03", b"\xc1", b"not msgpack"])
def test_garbage_is_a_frame_error(blob: bytes) -> None:
    with pytest.raises(FrameError):
        FrameCodec(new_key(), "m").open(blob)


@pytest.mark.parametrize("nonce", [b"", b"short", b"n" * 129])
def test_a_well_formed_frame_with_a_bad_nonce_is_a_frame_error(nonce: bytes) -> None:
    header = msgpack.packb([1, 1, 1, PUT, "k", 0, 1, nonce], use_bin_type=True)
    blob = HEADER_LEN.pack(len(header)) + header + os.urandom(32)
    with pytest.raises(FrameError):
        FrameCodec(new_key(), "m").open(blob)


def test_a_frame_of_another_move_does_not_open() -> None:
    key = new_key()
    blob = FrameCodec(key, "a").seal(frame())
    assert FrameCodec(key, "a").open(blob) == frame()
    with pytest.raises(FrameError, match="authentication"):
        FrameCodec(key, "b").open(blob)


def test_a_frame_under_another_key_does_not_open() -> None:
    blob = FrameCodec(new_key(), "a").seal(frame())
    with pytest.raises(FrameError, match="authentication"):
        FrameCodec(new_key(), "a").open(blob)


@pytest.mark.parametrize("size", [0, 16, KEY_BYTES - 1, KEY_BYTES + 1, 64])
def test_a_key_of_the_wrong_length_is_refused(size: int) -> None:
    with pytest.raises(FrameError, match=str(KEY_BYTES)):
        FrameCodec(os.urandom(size), "m")
    assert issubclass(FrameError, StateTransferError)


def test_new_key_has_the_key_length() -> None:
    k1, k2 = new_key(), new_key()
    assert len(k1) == KEY_BYTES and k1 != k2


def test_sequencer_accepts_frames_in_order() -> None:
    seq = Sequencer()
    for n in range(1, 6):
        seq.check(frame(n))
    assert seq.expected == 6


def test_sequencer_rejects_a_gap() -> None:
    seq = Sequencer()
    seq.check(frame(1))
    with pytest.raises(FrameError, match=r"frames 2\.\.2 missing"):
        seq.check(frame(3))
    with pytest.raises(FrameError, match="missing"):
        Sequencer().check(frame(2))


def test_sequencer_rejects_a_replay() -> None:
    seq = Sequencer()
    seq.check(frame(1))
    seq.check(frame(2))
    with pytest.raises(FrameError, match="replayed"):
        seq.check(frame(2))
    with pytest.raises(FrameError, match="replayed"):
        seq.check(frame(1))
    seq.check(frame(3))  # the rejected frames did not move the expectation


@pytest.mark.parametrize(("length", "size", "sizes"), [
    (1, CHUNK_SIZE, [1]),
    (CHUNK_SIZE, CHUNK_SIZE, [CHUNK_SIZE]),
    (CHUNK_SIZE + 1, CHUNK_SIZE, [CHUNK_SIZE, 1]),
    (3 * CHUNK_SIZE, CHUNK_SIZE, [CHUNK_SIZE] * 3),
    (10, 3, [3, 3, 3, 1]),
])
def test_split_sizes(length: int, size: int, sizes: list[int]) -> None:
    data = os.urandom(length)
    pieces = split(data, size)
    assert [len(p) for p in pieces] == sizes
    assert b"".join(pieces) == data


def test_split_of_empty_data_is_one_empty_piece() -> None:
    assert split(b"") == [b""]
    assert split(b"", 7) == [b""]


def test_a_64_kib_value_with_its_msgpack_header_is_one_chunk() -> None:
    # the module's own claim: a 64 KiB value (bin32 header, 5 bytes) fits one frame
    assert len(split(b"\xc6\x00\x01\x00\x00" + os.urandom(64 * 1024))) == 1


@pytest.mark.parametrize("length", [0, 1, 1000, CHUNK_SIZE - 1, CHUNK_SIZE * 2 + 5])
def test_join_of_split_is_identity(length: int) -> None:
    data = os.urandom(length)
    assert b"".join(split(data)) == data


def chunks_of(key: str, data: bytes, size: int = 4) -> list[Frame]:
    pieces = split(data, size)
    return [frame(key=key, chunk=i, count=len(pieces), payload=p) for i, p in enumerate(pieces)]


def test_reassembler_joins_chunks_in_order() -> None:
    reasm = Reassembler()
    data = b"0123456789abcdef-"
    chunks = chunks_of("v", data)
    assert len(chunks) == 5
    for c in chunks[:-1]:
        assert reasm.add(c) is None
        assert reasm.pending
    assert reasm.add(chunks[-1]) == data
    assert not reasm.pending
    # a one-chunk value, then the next chunked value, on the same reassembler
    assert reasm.add(frame(key="one", payload=b"x")) == b"x"
    assert reasm.add(frame(key="empty", payload=b"")) == b""
    for c in chunks_of("w", data)[:-1]:
        reasm.add(c)
    assert reasm.add(chunks_of("w", data)[-1]) == data


def test_reassembler_rejects_a_chunk_out_of_order() -> None:
    chunks = chunks_of("v", b"0123456789ab")
    reasm = Reassembler()
    reasm.add(chunks[0])
    with pytest.raises(FrameError, match="out of order"):
        reasm.add(chunks[2])
    with pytest.raises(FrameError, match="out of order"):
        Reassembler().add(chunks[1])  # no first chunk


def test_reassembler_rejects_a_repeated_chunk() -> None:
    chunks = chunks_of("v", b"0123456789ab")
    reasm = Reassembler()
    reasm.add(chunks[0])
    reasm.add(chunks[1])
    with pytest.raises(FrameError, match="out of order"):
        reasm.add(chunks[1])


def test_reassembler_rejects_an_interleaved_value() -> None:
    a, b = chunks_of("a", b"0123456789ab"), chunks_of("b", b"0123456789ab")
    reasm = Reassembler()
    reasm.add(a[0])
    with pytest.raises(FrameError, match="interrupted"):
        reasm.add(b[0])
    reasm = Reassembler()
    reasm.add(a[0])
    with pytest.raises(FrameError, match="out of order"):
        reasm.add(b[1])


@pytest.mark.parametrize("f", [frame(), frame(3, kind=END, key="", payload=b"\x80"),
                               frame(11, key="big", payload=os.urandom(CHUNK_SIZE))])
def test_a_frame_sealed_in_parts_is_the_frame_sealed_whole(f: Frame) -> None:
    """The sender writes a frame as its header and its sealed payload, never joined: the two
    parts, concatenated in Redis, are a frame that opens (and is exactly one frame)."""
    codec = FrameCodec(new_key(), "move-1")
    head, sealed = codec.seal_parts(f)
    assert codec.open(head + sealed) == f
    assert len(sealed) == len(f.payload) + 16  # the payload and its tag, nothing else
    with pytest.raises(FrameError):
        codec.open(head + sealed[:-1])
