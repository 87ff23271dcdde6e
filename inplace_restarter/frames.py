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

