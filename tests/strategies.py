"""Hypothesis strategies for the wire messages."""

from __future__ import annotations

import attrs
from hypothesis import strategies as st

from trio_p2p._codec import check_name
from trio_p2p._messages import (
    PROTOCOL_VERSION,
    Ack,
    Beacon,
    BeaconKind,
    Data,
    FileAccept,
    FileCancel,
    FileChunk,
    FileConfirm,
    FileEnd,
    FileFrame,
    FileOffer,
    FileReject,
    FileVerdict,
    Frame,
    Goodbye,
    GoodbyeCode,
    Hello,
    Message,
    Ping,
    Pong,
    Text,
)


def _valid_name(name: str) -> bool:
    try:
        check_name(name)
    except ValueError:
        return False
    return True


names = st.text(min_size=1, max_size=40).filter(_valid_name)
ports = st.integers(1, 65535)
seqs = st.integers(0, 2**63 - 1)


def messages_with(texts: st.SearchStrategy[str]) -> st.SearchStrategy[Message]:
    """Messages whose text is drawn from *texts*."""
    return st.builds(
        Message,
        id=st.uuids(version=4),
        sender_id=st.uuids(),
        sender_name=names,
        timestamp=st.floats(min_value=-9.9e9, max_value=9.9e10),
        content=st.builds(Text, texts),
    )


messages = messages_with(st.text(max_size=200))


def _resuming(hello: Hello, resume: tuple[bytes, int] | None) -> Hello:
    if resume is None:
        return hello
    return attrs.evolve(hello, resumes=resume[0], received=resume[1])


hellos = st.builds(
    _resuming,
    st.builds(
        Hello,
        version=st.just(PROTOCOL_VERSION),
        node_id=st.uuids(),
        session=st.binary(min_size=16, max_size=16),
        name=names,
        port=ports,
        max_frame_size=st.integers(1024, 2**32 - 1),
        capabilities=st.lists(
            st.text(
                alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=32
            ),
            max_size=16,
        ).map(tuple),
    ),
    st.none() | st.tuples(st.binary(min_size=16, max_size=16), st.integers(0, 2**63 - 1)),
)

transfer_ids = st.uuids()
offsets = st.integers(0, 2**63 - 1)
reasons = st.text(max_size=100)

file_frames: st.SearchStrategy[FileFrame] = st.one_of(
    st.builds(
        FileOffer,
        transfer=transfer_ids,
        name=st.text(min_size=1, max_size=100),
        size=offsets,
        chunk_size=st.integers(1, 2**32 - 1),
        mtime_ns=st.integers(-(2**63), 2**63 - 1),
    ),
    st.builds(FileAccept, transfer=transfer_ids, offset=offsets),
    st.builds(FileReject, transfer=transfer_ids, reason=reasons),
    st.builds(FileChunk, transfer=transfer_ids, offset=offsets, data=st.binary(min_size=1)),
    st.builds(FileConfirm, transfer=transfer_ids, offset=offsets),
    st.builds(FileEnd, transfer=transfer_ids, digest=st.binary(min_size=32, max_size=32)),
    st.builds(FileVerdict, transfer=transfer_ids, verified=st.just(True), reason=st.just("")),
    st.builds(FileVerdict, transfer=transfer_ids, verified=st.just(False), reason=reasons),
    st.builds(FileCancel, transfer=transfer_ids, reason=reasons),
)

frames: st.SearchStrategy[Frame] = st.one_of(
    file_frames,
    hellos,
    st.builds(Data, seq=seqs, message=messages),
    st.builds(Ack, seq=seqs),
    st.just(Ping()),
    st.just(Pong()),
    st.builds(Goodbye, code=st.sampled_from(GoodbyeCode), reason=st.text(max_size=100)),
)

beacons = st.builds(
    Beacon,
    kind=st.sampled_from(BeaconKind),
    node_id=st.uuids(),
    name=names,
    port=ports,
    key=st.binary(min_size=32, max_size=32),
    counter=st.integers(0, 2**63 - 1),
    addresses=st.lists(st.binary(min_size=4, max_size=4), min_size=1, max_size=16).map(tuple),
    signature=st.binary(min_size=64, max_size=64),
)
