"""Publishing a shim's task events to containerd, in order, each once.

containerd 1.6's shim library forwards events with the ttRPC call
``containerd.services.events.ttrpc.v1.Events/Forward`` on the socket named by
``TTRPC_ADDRESS`` (``ForwardRequest{envelope: Envelope{timestamp, namespace,
topic, event: Any}}``, the Any's type_url ``containerd.events.<Name>``).
:class:`Publisher` does the same from one thread, so events leave in the
order they were queued; :meth:`Publisher.flush` waits until everything queued
so far was forwarded (``Wait`` answers only once /tasks/exit went out).
A failed Forward is logged and dropped, as the Go shim's publisher does after
its retries: containerd being away must not stall the containers.
"""

from __future__ import annotations

import collections
import datetime
import logging
import threading

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message

from .proto import events_service_pb2
from .ttrpc import Client, RpcError

LOG = logging.getLogger(__name__)

EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"
FORWARD_ATTEMPTS = 3


def timestamp(moment: datetime.datetime | None) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    if moment is not None:
        stamp.FromDatetime(moment)
    return stamp


def pack_event(event: Message) -> any_pb2.Any:
    """An event as containerd's Any: type_url ``containerd.events.TaskExit`` (no type.googleapis.com/ prefix)."""
    return any_pb2.Any(type_url=event.DESCRIPTOR.full_name, value=event.SerializeToString())


class Publisher:
    """Forwards ``(topic, event)`` pairs to containerd's ttRPC socket ``address`` for ``namespace``.

    Thread-safe; :meth:`publish` never blocks. ``address`` ``""`` publishes nowhere
    (the events are counted and dropped), for a shim started without containerd.
    """

    def __init__(self, address: str, namespace: str) -> None:
        self._address = address
        self._namespace = namespace
        self._condition = threading.Condition()
        self._queue: collections.deque[tuple[int, str, Message]] = collections.deque()  # guarded by _condition
        self._queued = 0  # guarded by _condition: sequence number of the last event queued
        self._done = 0  # guarded by _condition: of the last event forwarded (or dropped)
        self._closed = False
        self._client: Client | None = None  # used by the publisher thread only
        self._thread = threading.Thread(target=self._run, daemon=True, name="shim-events")
        self._thread.start()

    def publish(self, topic: str, event: Message) -> None:
        with self._condition:
            self._queued += 1
            self._queue.append((self._queued, topic, event))
            self._condition.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event queued before this call left; False if that took over ``timeout``."""
        with self._condition:
            target = self._queued
            return self._condition.wait_for(lambda: self._done >= target, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Forward what is queued (within ``timeout``), then stop the thread."""
        self.flush(timeout)
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._thread.join(timeout)
        if self._client is not None:
            self._client.close()

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return
                sequence, topic, event = self._queue.popleft()
            self._forward(topic, event)
            with self._condition:
                self._done = sequence
                self._condition.notify_all()

    def _forward(self, topic: str, event: Message) -> None:
        if not self._address:
            return
        request = events_service_pb2.ForwardRequest(envelope=events_service_pb2.Envelope(
            timestamp=timestamp(datetime.datetime.now(datetime.UTC)), namespace=self._namespace,
            topic=topic, event=pack_event(event)))
        payload = request.SerializeToString()
        for attempt in range(1, FORWARD_ATTEMPTS + 1):
            try:
                if self._client is None:
                    self._client = Client(self._address)
                self._client.call(EVENTS_SERVICE, "Forward", payload)
                return
            except (OSError, RpcError) as error:
                LOG.warning("events: forwarding %s failed (attempt %d): %s", topic, attempt, error)
                if self._client is not None:
                    self._client.close()
                    self._client = None
