"""Interop: roslibpy (an independent third-party client, JSON mode) publishes, subscribes and calls services
through our server. roslibpy runs Twisted in its own thread, so the server runs in a thread of its own."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from crane_x7_vla.bridge.server import RosbridgeServer

roslibpy = pytest.importorskip("roslibpy")


@pytest.fixture
def server_thread() -> Iterator[tuple[RosbridgeServer, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = RosbridgeServer(port=0)
    server.add_service("/sync", "std_srvs/Trigger", lambda args: {"success": True, "message": "ok"})
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield server, loop
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_roslibpy_publishes_subscribes_and_calls_services(
    server_thread: tuple[RosbridgeServer, asyncio.AbstractEventLoop],
) -> None:
    server, loop = server_thread
    seen_by_server: queue.Queue[dict[str, Any]] = queue.Queue()
    server.add_subscriber("/chatter", seen_by_server.put)  # called in the server's loop thread
    ros = roslibpy.Ros(host="127.0.0.1", port=server.port)
    ros.run(timeout=10)
    try:
        assert ros.is_connected
        received: queue.Queue[dict[str, Any]] = queue.Queue()
        listener = roslibpy.Topic(ros, "/echo", "std_msgs/String")
        listener.subscribe(received.put)
        sync = roslibpy.Service(ros, "/sync", "std_srvs/Trigger")
        # ops on one connection are handled in order: once /sync answers, the subscribe is in place
        assert sync.call(roslibpy.ServiceRequest(), timeout=10)["success"] is True

        talker = roslibpy.Topic(ros, "/chatter", "std_msgs/String")
        talker.publish(roslibpy.Message({"data": "from roslibpy"}))
        assert seen_by_server.get(timeout=10) == {"data": "from roslibpy"}

        loop.call_soon_threadsafe(server.publish, "/echo", "std_msgs/String", {"data": "from our server"})
        assert received.get(timeout=10) == {"data": "from our server"}
        listener.unsubscribe()
        talker.unadvertise()
    finally:
        ros.close()
