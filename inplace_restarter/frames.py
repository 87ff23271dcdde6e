"""Raw Jupyter messages as zmq frames: split, check, read and send them without a full deserialize.

The relay reads only what it acts on of a message; these helpers do that
much and no more, on the frames as they came off the socket.
"""

from __future__ import annotations

import json
from hmac import compare_digest

import zmq
from jupyter_client.session import DELIM, Session

_SNDMORE = int(zmq.SNDMORE)


def send_frames(socket: zmq.Socket, frames: list, copy: bool = True) -> None:
    """``socket.send_multipart``, without its enum arithmetic on every frame.

    pyzmq computes ``zmq.SNDMORE | flags`` per frame, which builds an IntFlag
    member each time: a tenth of the proxy's CPU on the relay path.
    """
    for frame in frames[:-1]:
        socket.send(frame, _SNDMORE, copy=copy)
    socket.send(frames[-1], 0, copy=copy)


def recv_frames(socket: zmq.Socket, flags: int = 0) -> list[zmq.Frame]:
    """``socket.recv_multipart(flags, copy=False)``, asking each frame whether more follow.

    pyzmq asks the socket (``getsockopt(RCVMORE)``, through its option
    enum) after every frame: 5-6 us of a 7-frame message's 15 us on this
    machine (timeit, 20000 messages over inproc, interleaved with and without).
    """
    frame = socket.recv(flags, copy=False)
    frames = [frame]
    while frame.more:
        frame = socket.recv(flags, copy=False)
        frames.append(frame)
    return frames


def delimiter(frames: list) -> int:
    """The index of the frame that ends the identities (or topic) of a raw message."""
    for index, frame in enumerate(frames):
        if frame.bytes == DELIM:
            return index
    raise ValueError("no delimiter frame in the message")


def verified(session: Session, frames: list) -> tuple[list[bytes], str, list, list]:
    """Split a raw message (of zmq Frames) and check its signature.

    Returns the identities (or topic), the message type, [header, parent,
    metadata, content] (content as the received frame) and the buffers.
    """
    delim = delimiter(frames)
    idents = [frame.bytes for frame in frames[:delim]]
    signature = frames[delim + 1].bytes
    header, parent, metadata = (frame.bytes for frame in frames[delim + 2 : delim + 5])
    content = frames[delim + 5]
    parts = [header, parent, metadata, content.buffer]
    if session.auth is not None and not compare_digest(signature, session.sign(parts)):
        raise ValueError("invalid signature")
    parts[3] = content
    return idents, json.loads(header)["msg_type"], parts, frames[delim + 6 :]


def decoded(session: Session, frames: list) -> tuple[list[bytes], dict]:
    """The identities and the verified message as a dict, its dates left as the strings they came as.

    Unlike ``Session.deserialize`` this does not record the signature
    against replays, so the same message can be read again by ipykernel.
    """
    idents, _, parts, buffers = verified(session, frames)
    return idents, unpacked(parts, buffers)


def unpacked(parts: list, buffers: list) -> dict:
    """The message of ``verified``'s parts and buffers, as a dict."""
    header, parent, metadata, content = (json.loads(part if isinstance(part, bytes) else part.bytes) for part in parts)
    return {"header": header, "parent_header": parent, "metadata": metadata, "content": content, "buffers": buffers}


def spend(session: Session, signature: bytes) -> None:
    """Record a request's signature against replays, as reading its content does; ValueError if spent already."""
    if signature in session.digest_history:
        raise ValueError(f"Duplicate Signature: {signature!r}")
    from .kernelbase import add_digest

    add_digest(session, signature)


def read(session: Session, frames: list, content: bool) -> dict:
    """``Session.deserialize`` of a message after its identities, dates left as strings.

    The same checks (signed, not a replay, well formed, with a msg_id and
    msg_type), and the signature recorded against replays when the content
    is read (kernelbase.add_digest).  But
    no date parsing, 17% of the proxy's main thread per request in a py-spy
    profile of 3000 cells (proxy CPU per cell 1567 -> 1433 us, 16 interleaved
    rounds of 300 cells), and no ``adapt`` to an older protocol version: the
    inner kernel gets the request as it came.  ``content`` False leaves it
    packed.
    """
    if len(frames) < 5:
        raise TypeError("malformed message, must have at least 5 elements")
    signature = frames[0].bytes
    parts = [frame.bytes for frame in frames[1:5]]
    if session.auth is not None:
        if not signature:
            raise ValueError("Unsigned Message")
        if content:
            spend(session, signature)
        elif signature in session.digest_history:
            raise ValueError(f"Duplicate Signature: {signature!r}")
        if not compare_digest(signature, session.sign(parts)):
            raise ValueError(f"Invalid Signature: {signature!r}")
    header = session.unpack(parts[0])
    return {
        "header": header,
        "msg_id": header["msg_id"],
        "msg_type": header["msg_type"],
        "parent_header": session.unpack(parts[1]),
        "metadata": session.unpack(parts[2]),
        "content": session.unpack(parts[3]) if content else parts[3],
        "buffers": [memoryview(frame) for frame in frames[5:]],
    }
