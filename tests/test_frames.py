"""How the relay reads and writes the raw frames of a Jupyter message.

A raw message is ``[identities or topic..., <IDS|MSG>, signature, header,
parent, metadata, content, buffers...]``; the signature is an HMAC of the four
JSON parts with the connection's key.  The relay verifies what it acts on,
never decodes content it only forwards, and drops (its callers catch the
error) whatever is malformed or signed with another key.  These tests send
real messages, built by jupyter_client's ``Session``, through a real zmq pair.
"""

from __future__ import annotations

import json
import uuid

import pytest
import zmq
from jupyter_client.session import DELIM, Session

from inplace_restarter.frames import decoded, delimiter, read, send_frames, unpacked, verified

KEY = uuid.uuid4().hex.encode()


@pytest.fixture
def pair():
    """A PAIR of connected inproc sockets: (sender, receiver)."""
    context = zmq.Context()
    sender, receiver = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    address = f"inproc://frames-{uuid.uuid4().hex}"
    receiver.bind(address)
    sender.connect(address)
    try:
        yield sender, receiver
    finally:
        context.destroy(linger=0)


@pytest.fixture
def session() -> Session:
    return Session(key=KEY)


def through(pair, frames: list) -> list[zmq.Frame]:
    """``frames`` as the relay gets them: sent over zmq, received as Frames without copying."""
    sender, receiver = pair
    sender.send_multipart(frames)
    assert receiver.poll(10_000), "nothing arrived"
    return receiver.recv_multipart(copy=False)


def message(session: Session, msg_type: str = "execute_request", content: dict | None = None, **kwargs) -> dict:
    return session.msg(msg_type, {"code": "1", "silent": False} if content is None else content, **kwargs)


def raw(session: Session, msg: dict, idents: list[bytes] = (), buffers: list[bytes] = ()) -> list[bytes]:
    """The frames ``session.send`` would send for ``msg``."""
    return [*session.serialize(msg, ident=list(idents)), *buffers]


def refused(call) -> Exception:
    """What ``call`` raised; it must raise, so the relay drops the message."""
    try:
        call()
    except Exception as e:
        return e
    raise AssertionError("accepted")


# --- reading -------------------------------------------------------------------------------


def test_the_delimiter_ends_the_identities_of_a_request_or_the_topic_of_output(pair, session):
    msg = message(session)
    assert delimiter(through(pair, raw(session, msg))) == 0
    assert delimiter(through(pair, raw(session, msg, [b"client-a", b"router-b"]))) == 2
    assert delimiter(through(pair, raw(session, msg, [b"stream.stdout"]))) == 1


def test_a_signed_message_is_split_without_decoding_its_content(pair, session):
    msg = message(session, content={"code": "print('é')", "silent": False}, parent={"msg_id": "p1"})
    frames = through(pair, raw(session, msg, [b"client"], [b"\x00buffer"]))

    idents, msg_type, parts, buffers = verified(session, frames)

    assert idents == [b"client"]
    assert msg_type == "execute_request"
    header, parent, metadata, content = parts
    assert json.loads(header)["msg_id"] == msg["header"]["msg_id"]
    assert json.loads(parent)["msg_id"] == "p1"
    assert json.loads(metadata) == {}
    assert isinstance(content, zmq.Frame), "content is forwarded as the frame it came in"
    assert json.loads(content.bytes) == {"code": "print('é')", "silent": False}
    assert [b.bytes for b in buffers] == [b"\x00buffer"]


def test_decoded_is_the_message_as_sent_its_dates_left_as_strings(pair, session):
    msg = message(session, metadata={"m": 1})
    sent = raw(session, msg, [b"client"], [b"one", b"two"])
    idents, got = decoded(session, through(pair, sent))
    assert idents == [b"client"]
    assert got["header"] == json.loads(sent[3]) and isinstance(got["header"]["date"], str)
    assert got["parent_header"] == {}
    assert got["metadata"] == {"m": 1}
    assert got["content"] == msg["content"]
    assert [b.bytes for b in got["buffers"]] == [b"one", b"two"]


def test_reading_a_message_does_not_spend_its_signature(pair, session):
    """ipykernel reads the same request again after the proxy: it must not be taken for a replay."""
    frames = through(pair, raw(session, message(session), [b"client"]))
    decoded(session, frames)
    decoded(session, frames)
    _, parts = session.feed_identities([f.bytes for f in frames])
    assert session.deserialize(parts)["content"]["code"] == "1"


def test_unpacked_reads_parts_as_bytes_or_as_frames(pair, session):
    msg = message(session)
    sent = raw(session, msg)
    _, _, parts, buffers = verified(session, through(pair, sent))
    from_frames = unpacked(parts, buffers)
    from_bytes = unpacked(sent[2:6], [])
    assert from_frames == from_bytes
    assert from_bytes["content"] == msg["content"]


@pytest.mark.parametrize("part", ["header", "parent", "metadata", "content"])
def test_a_message_changed_after_signing_is_refused(pair, session, part):
    frames = raw(session, message(session), [b"client"])
    index = 1 + 2 + ["header", "parent", "metadata", "content"].index(part)
    changed = json.loads(frames[index])
    changed["tampered"] = True
    frames[index] = json.dumps(changed).encode()
    error = refused(lambda: verified(session, through(pair, frames)))
    assert isinstance(error, ValueError) and "signature" in str(error)
    assert isinstance(refused(lambda: decoded(session, through(pair, frames))), ValueError)


@pytest.mark.parametrize("signature", [b"", b"0" * 64, None], ids=["empty", "zeros", "another key"])
def test_a_message_not_signed_with_the_connections_key_is_refused(pair, session, signature):
    msg = message(session)
    frames = raw(Session(key=b"another key"), msg) if signature is None else raw(session, msg)
    if signature is not None:
        frames[1] = signature
    error = refused(lambda: verified(session, through(pair, frames)))
    assert isinstance(error, ValueError) and "signature" in str(error)


def test_a_connection_without_a_key_checks_no_signature(pair):
    """As jupyter_client's Session: an empty key turns signing off."""
    unsigned = Session(key=b"")
    frames = raw(unsigned, message(unsigned))
    frames[1] = b"anything"
    assert verified(unsigned, through(pair, frames))[1] == "execute_request"


def test_buffers_are_outside_the_signature_as_the_protocol_has_it(pair, session):
    frames = raw(session, message(session), buffers=[b"original"])
    frames[-1] = b"changed"
    _, got = decoded(session, through(pair, frames))
    assert [b.bytes for b in got["buffers"]] == [b"changed"]


def test_a_message_without_a_delimiter_is_refused(pair, session):
    frames = raw(session, message(session), [b"client"])
    frames.remove(DELIM)
    received = through(pair, frames)
    refused(lambda: delimiter(received))
    refused(lambda: verified(session, received))


@pytest.mark.parametrize("keep", [1, 2, 5], ids=["delimiter only", "no header", "no content"])
def test_a_message_missing_frames_is_refused(pair, session, keep):
    frames = raw(session, message(session))[:keep]
    refused(lambda: verified(session, through(pair, frames)))


def test_a_signed_message_whose_content_is_not_json_passes_verification_but_not_decoding(pair, session):
    """Content is only decoded where the relay acts on it; forwarding leaves it to the kernel to refuse."""
    frames = raw(session, message(session))
    frames[5] = b"not json"
    frames[1] = session.sign(frames[2:6])
    received = through(pair, frames)
    assert verified(session, received)[1] == "execute_request"
    assert isinstance(refused(lambda: decoded(session, received)), ValueError)


# --- writing -------------------------------------------------------------------------------


@pytest.mark.parametrize("copy", [True, False])
def test_send_frames_sends_one_multipart_message(pair, session, copy):
    sender, receiver = pair
    frames = raw(session, message(session), [b"stream.stdout"], [b"\x00" * 100_000, b""])
    send_frames(sender, frames, copy=copy)
    assert receiver.poll(10_000)
    assert receiver.recv_multipart() == frames
    assert not receiver.poll(0), "nothing more than the one message"


def test_received_frames_are_forwarded_as_they_came(pair, session):
    """What the relay does with output: the Frames it received, sent on without copying or re-signing."""
    sender, receiver = pair
    frames = raw(session, message(session, "stream", {"name": "stdout", "text": "hi"}), [b"stream.stdout"], [b"buf"])
    received = through(pair, frames)
    send_frames(sender, received, copy=False)
    assert receiver.poll(10_000)
    forwarded = receiver.recv_multipart(copy=False)
    assert [f.bytes for f in forwarded] == frames
    assert decoded(session, forwarded)[1]["content"] == {"name": "stdout", "text": "hi"}


def test_send_frames_sends_a_single_frame(pair):
    sender, receiver = pair
    send_frames(sender, [b"only"])
    assert receiver.poll(10_000)
    assert receiver.recv_multipart() == [b"only"]


# -- read: a client's request, as Session.deserialize checks it -------------------------


def after_identities(session: Session, frames: list) -> list:
    return session.feed_identities(frames, copy=False)[1]


@pytest.mark.parametrize("content", [True, False])
def test_read_gives_what_session_deserialize_gives_but_the_dates(pair, session, content):
    msg = message(session, metadata={"cellId": "c1"})
    frames = after_identities(session, through(pair, raw(session, msg, [b"client"], [b"buffer"])))
    mine = read(session, frames, content=content)
    theirs = Session(key=KEY).deserialize(frames, content=content, copy=False)
    assert mine["header"] == {**theirs["header"], "date": json.loads(frames[1].bytes)["date"]}
    assert (mine["parent_header"], mine["metadata"]) == (theirs["parent_header"], theirs["metadata"])
    assert (mine["msg_id"], mine["msg_type"]) == (msg["header"]["msg_id"], "execute_request")
    assert [bytes(b) for b in mine["buffers"]] == [b"buffer"]
    if content:
        assert mine["content"] == theirs["content"] == msg["content"]
    else:
        assert session.unpack(mine["content"]) == msg["content"]


def test_read_with_content_spends_the_signature_as_ipykernel_does_and_refuses_a_replay(pair, session):
    frames = after_identities(session, through(pair, raw(session, message(session))))
    read(session, frames, content=False)
    read(session, frames, content=True)
    with pytest.raises(ValueError, match="Duplicate Signature"):
        read(session, frames, content=False)


@pytest.mark.parametrize("spoil", ["signature", "header", "unsigned"])
def test_read_refuses_a_message_not_signed_with_the_connections_key(pair, session, spoil):
    frames = raw(session, message(session))
    index = {"signature": 1, "header": 2, "unsigned": 1}[spoil]
    frames[index] = b"" if spoil == "unsigned" else frames[index] + b" "
    with pytest.raises(ValueError, match="Unsigned|Invalid Signature"):
        read(session, after_identities(session, through(pair, frames)), content=True)


def test_read_refuses_a_message_missing_frames_or_its_msg_id(pair, session):
    frames = raw(session, message(session))
    with pytest.raises(TypeError):
        read(session, after_identities(session, through(pair, frames[:4])), content=False)
    header = json.loads(frames[2])
    del header["msg_id"]
    msg = message(session)
    msg["header"] = header
    with pytest.raises(KeyError):
        read(session, after_identities(session, through(pair, raw(session, msg))), content=False)
