"""The iopub relay alone: iopub.IOPubRelay between a source's PUB socket and a client's SUB, on loopback.

The source here is a PUB socket publishing with the client's Session, as an
inner kernel does; its ``take`` is what the relay asks of each message.
"""

from __future__ import annotations

import threading

import pytest
import zmq
from jupyter_client.session import Session

from inplace_restarter.iopub import IOPubRelay

from .relay_harness import Subscriber

pytestmark = pytest.mark.timeout(60)


class Source:
    """One publisher's iopub, as the relay reads it: drops what ``drop`` names, passes the rest as it came."""

    def __init__(self, context: zmq.Context, session: Session, drop: str = "dropped"):
        self.session, self.drop = session, drop
        self.pub = context.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.url = f"tcp://127.0.0.1:{self.pub.bind_to_random_port('tcp://127.0.0.1')}"
        self.curve_keys = None
        self.taken: list[list[bytes]] = []

    def take(self, frames: list[zmq.Frame]) -> list | None:
        raw = [frame.bytes for frame in frames]
        self.taken.append(raw)
        _, parts = self.session.feed_identities(raw)
        if self.session.deserialize(parts)["content"].get("text") == self.drop:
            return None
        return frames

    def publish(self, text: str) -> list[bytes]:
        msg = self.session.msg("stream", {"name": "stdout", "text": text})
        frames = self.session.serialize(msg, ident=b"stream.stdout")
        self.pub.send_multipart(frames)
        return frames


@pytest.fixture
def relay():
    """A started relay on a loopback XPUB, and a subscribed client that has had its welcome."""
    context = zmq.Context.instance()
    session = Session(key=b"iopub-test", signature_scheme="hmac-sha256")
    xpub = context.socket(zmq.XPUB)
    port = xpub.bind_to_random_port("tcp://127.0.0.1")
    relay = IOPubRelay(xpub, session, context)
    relay.start()
    client = Subscriber(context, f"tcp://127.0.0.1:{port}", session)
    assert client.message()["msg_type"] == "iopub_welcome"
    yield relay, client, session, context
    client.close()
    relay.stop()
    xpub.close(linger=0)


def own(session: Session, text: str) -> list[bytes]:
    return session.serialize(session.msg("stream", {"name": "stdout", "text": text}), ident=b"stream.stdout")


def text_of(client: Subscriber, session: Session) -> str:
    _, parts = session.feed_identities(client.frames())
    return session.deserialize(parts)["content"]["text"]


def connected(relay: IOPubRelay, client: Subscriber, session: Session, source: Source) -> None:
    """Publish until the relay's subscription to ``source`` is through (zmq's slow joiner); drain the client."""
    while not source.taken:
        source.publish("dropped")
        relay.send_multipart(own(session, "tick"))
        assert text_of(client, session) == "tick"


def test_each_new_subscription_is_welcomed_as_ipykernel_7_welcomes_it(relay):
    _, client, session, context = relay
    # The fixture's client had its welcome to "" (everything); a subscription to a topic has its own.
    second = context.socket(zmq.SUB)
    try:
        second.subscribe(b"stream.")
        second.connect(client.socket.getsockopt(zmq.LAST_ENDPOINT).decode())
        assert second.poll(10000), "no welcome within 10 s"
        topic, *_ = frames = second.recv_multipart()
        welcome = session.deserialize(session.feed_identities(frames)[1])
        assert topic == b"stream."
        assert welcome["msg_type"] == "iopub_welcome" and welcome["content"] == {"subscription": "stream."}
    finally:
        second.close(linger=0)


def test_a_sources_output_goes_to_the_client_frame_for_frame_unless_taken_out(relay):
    iopub, client, session, context = relay
    source = Source(context, session)
    iopub.watch(source)
    connected(iopub, client, session, source)
    source.publish("dropped")
    sent = source.publish("kept")
    assert client.frames() == sent, "relayed as the source signed it"


def test_the_proxys_own_messages_from_any_thread_keep_each_threads_order(relay):
    iopub, client, session, _ = relay

    def send(name: str) -> None:
        for n in range(50):
            iopub.send_multipart(own(session, f"{name} {n}"))

    threads = [threading.Thread(target=send, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    send("main")
    for thread in threads:
        thread.join()
    texts = [text_of(client, session) for _ in range(150)]
    for name in ("a", "b", "main"):
        assert [text for text in texts if text.startswith(f"{name} ")] == [f"{name} {n}" for n in range(50)]


def test_an_unwatched_source_is_not_relayed_after_the_proxys_next_message(relay):
    iopub, client, session, context = relay
    source = Source(context, session)
    iopub.watch(source)
    connected(iopub, client, session, source)
    iopub.unwatch(source)
    source.publish("after unwatch")
    iopub.send_multipart(own(session, "marker"))
    assert text_of(client, session) == "marker"
    assert not client.socket.poll(200), "nothing of the source after it was unwatched"


def test_stop_sends_everything_sent_before_it(relay):
    iopub, client, session, _ = relay
    for n in range(20):
        iopub.send_multipart(own(session, str(n)))
    iopub.stop()
    assert [text_of(client, session) for _ in range(20)] == [str(n) for n in range(20)]
