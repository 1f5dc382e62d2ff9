"""Client <-> server conformance over real websockets on 127.0.0.1.

Synchronisation never sleeps: ops on one connection are handled in order, so after a ``call_service`` to the
server's ``/sync`` returns, every op that client sent before it (subscribe, advertise, ...) has been applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect as raw_connect
from websockets.asyncio.server import ServerConnection, serve

from crane_x7_vla.bridge.client import RosbridgeClient, ServiceError
from crane_x7_vla.bridge.messages import CompressedImage, GripperCommandGoal, String
from crane_x7_vla.bridge.protocol import GoalStatus
from crane_x7_vla.bridge.server import RosbridgeServer
from crane_x7_vla.robot import GRIPPER_ACTION_NAME, GRIPPER_ACTION_TYPE

Runner = Callable[..., Any]


@contextlib.asynccontextmanager
async def graph(n_clients: int = 1, **client_kw: Any) -> AsyncIterator[tuple[RosbridgeServer, list[RosbridgeClient]]]:
    server = RosbridgeServer(port=0)
    server.add_service("/sync", "std_srvs/Trigger", lambda args: {"success": True})
    async with server:
        clients = [RosbridgeClient("127.0.0.1", server.port, **client_kw) for _ in range(n_clients)]
        for c in clients:
            await c.connect()
        try:
            yield server, clients
        finally:
            for c in clients:
                await c.close()


class Inbox:
    """Collects callback messages; ``await inbox.wait(n)`` until n have arrived."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = asyncio.Event()

    def __call__(self, msg: Any) -> None:
        self.items.append(msg)
        self._changed.set()

    async def wait(self, n: int, timeout: float = 5.0) -> list[Any]:
        async def until() -> None:
            while len(self.items) < n:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)
        return self.items


async def sync(client: RosbridgeClient) -> None:
    assert await client.call_service("/sync", {}, timeout=5) == {"success": True}


def test_publish_on_one_client_reaches_the_other(arun: Runner) -> None:
    async def main() -> None:
        async with graph(2) as (server, (a, b)):
            inbox, local = Inbox(), Inbox()
            server.add_subscriber("/chatter", local)
            await b.subscribe("/chatter", "std_msgs/msg/String", inbox)
            await sync(b)
            for i in range(3):
                await a.publish("/chatter", String(f"hello {i}"))
            assert [m["data"] for m in await inbox.wait(3)] == ["hello 0", "hello 1", "hello 2"]
            assert [m["data"] for m in await local.wait(3)] == ["hello 0", "hello 1", "hello 2"]

    arun(main())


def test_cbor_subscription_delivers_raw_bytes(arun: Runner) -> None:
    async def main() -> None:
        async with graph(2) as (server, (a, b)):
            inbox = Inbox()
            await b.subscribe("/img", CompressedImage.TYPE, inbox, compression="cbor", queue_length=1)
            await sync(b)
            jpeg = bytes(range(256)) * 10
            await a.publish("/img", CompressedImage(jpeg))  # JSON (base64) in, CBOR byte string out
            await inbox.wait(1)
            server.publish("/img", CompressedImage.TYPE, {"data": jpeg, "format": "jpeg", "position": [0.5, 1.5]})
            first, second = await inbox.wait(2)
            assert CompressedImage.from_dict(first).data == jpeg and isinstance(first["data"], bytes)
            assert second["data"] == jpeg and list(second["position"]) == [0.5, 1.5]

    arun(main())


def test_queue_length_drops_oldest_and_throttle_spaces_messages(arun: Runner) -> None:
    async def main() -> None:
        async with graph(1) as (server, (c,)):
            q3, thr = Inbox(), Inbox()
            await c.subscribe("/burst", "std_msgs/String", q3, queue_length=3)
            await c.subscribe("/slow", "std_msgs/String", thr, queue_length=1, throttle_rate=150)
            await sync(c)
            # server.publish is synchronous: the whole burst is queued before the sender task runs.
            for i in range(10):
                server.publish("/burst", "std_msgs/String", {"data": str(i)})
            assert [m["data"] for m in await q3.wait(3)] == ["7", "8", "9"]
            loop = asyncio.get_running_loop()
            stamps = []
            for i in range(3):
                for j in range(5):
                    server.publish("/slow", "std_msgs/String", {"data": f"{i}.{j}"})
                await thr.wait(i + 1)
                stamps.append(loop.time())
            # first burst: newest of 5 (queue_length 1); later ones at least throttle_rate apart
            assert [m["data"] for m in thr.items] == ["0.4", "1.4", "2.4"]
            assert all(b - a >= 0.14 for a, b in itertools.pairwise(stamps))
            await sync(c)  # nothing else was queued behind
            assert len(q3.items) == 3 and len(thr.items) == 3

    arun(main())


def test_fragmented_and_png_subscriptions(arun: Runner) -> None:
    async def main() -> None:
        async with graph(1) as (server, (c,)):
            frag, png = Inbox(), Inbox()
            await c.subscribe("/big", "std_msgs/String", frag, fragment_size=100)
            await c.subscribe("/small", "std_msgs/String", png, compression="png")
            await sync(c)
            text = "x" * 5000 + "end"
            server.publish("/big", "std_msgs/String", {"data": text})
            server.publish("/small", "std_msgs/String", {"data": "packed in a png"})
            assert (await frag.wait(1))[0]["data"] == text
            assert (await png.wait(1))[0]["data"] == "packed in a png"

    arun(main())


def test_unsubscribe_stops_delivery(arun: Runner) -> None:
    async def main() -> None:
        async with graph(1) as (server, (c,)):
            gone, kept = Inbox(), Inbox()
            sub = await c.subscribe("/t", "std_msgs/String", gone)
            await c.subscribe("/u", "std_msgs/String", kept)
            await sync(c)
            await c.unsubscribe(sub)
            await sync(c)
            server.publish("/t", "std_msgs/String", {"data": "dropped"})
            server.publish("/u", "std_msgs/String", {"data": "kept"})
            await kept.wait(1)
            assert gone.items == []

    arun(main())


def test_services_in_process_and_between_clients(arun: Runner) -> None:
    async def main() -> None:
        async with graph(2) as (server, (a, b)):
            async def add(args: dict[str, Any]) -> dict[str, Any]:
                return {"sum": args["a"] + args["b"]}

            def broken(args: dict[str, Any]) -> dict[str, Any]:
                raise RuntimeError("motor fault")

            server.add_service("/add", "example/AddTwoInts", add)
            server.add_service("/broken", "std_srvs/Trigger", broken)
            assert await a.call_service("/add", {"a": 2, "b": 3}) == {"sum": 5}
            with pytest.raises(ServiceError, match="motor fault"):
                await a.call_service("/broken", {})
            with pytest.raises(ServiceError, match="not advertised"):
                await a.call_service("/nope", {})
            await b.advertise_service("/echo", "example/Echo", lambda args: {"echo": args["x"]})
            await sync(b)
            results = await asyncio.gather(*(a.call_service("/echo", {"x": i}) for i in range(5)))
            assert results == [{"echo": i} for i in range(5)]

    arun(main())


def test_actions_feedback_result_cancel_abort(arun: Runner) -> None:
    async def main() -> None:
        started = asyncio.Event()
        cleaned_up = asyncio.Event()

        async def gripper(goal: dict[str, Any], feedback: Callable[[Any], Any]) -> dict[str, Any]:
            target = GripperCommandGoal.from_dict(goal).position
            if target < 0:
                raise ValueError("position below the lower limit")
            if target > 1.0:  # a long goal that waits to be canceled
                started.set()
                try:
                    await asyncio.Event().wait()
                finally:
                    cleaned_up.set()
            for i in range(3):
                await feedback({"position": target * (i + 1) / 3})
            return {"position": target, "reached_goal": True}

        async with graph(2) as (server, (a, b)):
            server.add_action_server(GRIPPER_ACTION_NAME, GRIPPER_ACTION_TYPE, gripper)
            fb = Inbox()
            handle = await a.send_action_goal(GRIPPER_ACTION_NAME, GRIPPER_ACTION_TYPE, GripperCommandGoal(0.6, 1.0),
                                              feedback_cb=fb)
            res = await handle.result(timeout=5)
            assert res.succeeded and res.status == GoalStatus.SUCCEEDED and res.values["reached_goal"] is True
            assert [round(m["position"], 6) for m in await fb.wait(3)] == [0.2, 0.4, 0.6]

            long = await a.send_action_goal(GRIPPER_ACTION_NAME, GRIPPER_ACTION_TYPE, GripperCommandGoal(1.5))
            await asyncio.wait_for(started.wait(), 5)
            await long.cancel()
            res = await long.result(timeout=5)
            assert res.canceled and res.status == GoalStatus.CANCELED and cleaned_up.is_set()

            bad = await a.send_action_goal(GRIPPER_ACTION_NAME, GRIPPER_ACTION_TYPE, GripperCommandGoal(-1.0))
            res = await bad.result(timeout=5)
            assert res.status == GoalStatus.ABORTED and not res.result and "lower limit" in res.values

            # an action served by another client, with feedback and cancel forwarded through the server
            async def counting(goal: dict[str, Any], feedback: Callable[[Any], Any]) -> dict[str, Any]:
                await feedback({"step": 1})
                if goal["n"] < 0:
                    await asyncio.Event().wait()
                return {"n": goal["n"] * 2}

            await b.advertise_action("/count", "example/Count", counting)
            await sync(b)
            fb2 = Inbox()
            h = await a.send_action_goal("/count", "example/Count", {"n": 21}, feedback_cb=fb2)
            assert (await h.result(timeout=5)).values == {"n": 42}
            assert (await fb2.wait(1))[0] == {"step": 1}
            h = await a.send_action_goal("/count", "example/Count", {"n": -1})
            await h.cancel()
            assert (await h.result(timeout=5)).canceled

    arun(main())


def test_reconnect_after_server_restart_resubscribes(arun: Runner) -> None:
    async def main() -> None:
        server = RosbridgeServer(port=0)
        server.add_service("/sync", "std_srvs/Trigger", lambda args: {"success": True})
        await server.start()
        port = server.port
        client = RosbridgeClient("127.0.0.1", port, reconnect_min=0.05, reconnect_max=0.2)
        states: list[bool] = []
        down = asyncio.Event()

        def on_state(up: bool) -> None:
            states.append(up)
            if not up:
                down.set()

        client.add_state_listener(on_state)
        inbox, echo = Inbox(), Inbox()
        await client.connect()
        await client.subscribe("/chatter", "std_msgs/String", inbox)
        await client.advertise("/from_client", "std_msgs/String")
        await sync(client)
        server.publish("/chatter", "std_msgs/String", {"data": "before"})
        await inbox.wait(1)

        await server.stop()
        await asyncio.wait_for(down.wait(), 5)
        assert not client.connected
        await client.publish("/from_client", String("queued 1"))  # never blocks while disconnected
        await client.publish("/from_client", String("queued 2"))  # latest-only

        server2 = RosbridgeServer(port=port)  # same port
        server2.add_service("/sync", "std_srvs/Trigger", lambda args: {"success": True})
        server2.add_subscriber("/from_client", echo)
        await server2.start()
        try:
            await client.wait_connected(5)
            assert [m["data"] for m in await echo.wait(1)] == ["queued 2"]
            await sync(client)  # the replayed subscribe has been applied
            server2.publish("/chatter", "std_msgs/String", {"data": "after"})
            assert [m["data"] for m in await inbox.wait(2)] == ["before", "after"]
            assert states == [True, False, True] and client.reconnects == 1
        finally:
            await client.close()
            await server2.stop()

    arun(main())


class Blackhole:
    """A TCP forwarder that can be switched to swallow traffic: the peer is 'alive' but never answers."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if not self.frozen:
                        dst.write(data)
                        await dst.drain()

        await asyncio.gather(pump(reader, up_w), pump(up_r, writer))

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def test_dead_peer_is_detected_within_ping_interval_plus_timeout(arun: Runner) -> None:
    async def main() -> None:
        async with RosbridgeServer(port=0) as server:
            hole = Blackhole(server.port)
            port = await hole.start()
            client = RosbridgeClient("127.0.0.1", port, ping_interval=0.2, ping_timeout=0.3, reconnect_min=5.0,
                                     reconnect_max=5.0)
            lost = asyncio.get_running_loop().create_future()
            client.add_state_listener(lambda up: None if up or lost.done() else lost.set_result(None))
            await client.connect()
            loop = asyncio.get_running_loop()
            hole.frozen = True
            t0 = loop.time()
            await asyncio.wait_for(lost, 5)
            assert loop.time() - t0 <= 0.2 + 0.3 + 0.3  # interval + timeout + scheduling slack
            assert not client.connected
            await client.close()
            hole.close()

    arun(main())


def test_fuzzed_frames_never_crash_server_or_client(arun: Runner) -> None:
    rng = random.Random(1234)
    garbage: list[str | bytes] = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))) for _ in range(100)]
    garbage += ["", "null", "[]", '{"op":1}', '{"op":"publish"}', '{"op":"subscribe","topic":5}',
                '{"op":"fragment","id":"x","data":"{","num":0,"total":1}', '{"op":"png","data":"%%"}',
                '{"op":"service_response","id":"nobody","service":"/x","result":true}',
                '{"op":"action_result","id":"nobody","action":"/x","result":true}', "{" * 100000]
    garbage += ["".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(0, 40))) for _ in range(100)]

    async def main() -> None:
        async with graph(1) as (server, (c,)):
            inbox = Inbox()
            await c.subscribe("/t", "std_msgs/String", inbox)
            async with raw_connect(f"ws://127.0.0.1:{server.port}") as ws:
                for frame in garbage:
                    await ws.send(frame)
                # the same connection still works afterwards
                await ws.send('{"op":"advertise","topic":"/t","type":"std_msgs/String"}')
                await ws.send('{"op":"publish","topic":"/t","msg":{"data":"still alive"}}')
                assert (await inbox.wait(1))[0]["data"] == "still alive"

        # and the client survives a server that talks garbage
        async def evil(ws: ServerConnection) -> None:
            async for _ in ws:
                break  # first frame from the client (its subscribe)
            for frame in garbage:
                await ws.send(frame)
            await ws.send('{"op":"publish","topic":"/t","msg":{"data":"after garbage"}}')
            await ws.wait_closed()

        async with serve(evil, "127.0.0.1", 0) as evil_server:
            port = next(iter(evil_server.sockets)).getsockname()[1]
            client = RosbridgeClient("127.0.0.1", port)
            await client.connect()
            got = Inbox()
            await client.subscribe("/t", "std_msgs/String", got)
            assert (await got.wait(1))[0]["data"] == "after garbage"
            assert client.connected
            await client.close()

    arun(main(), timeout=30)


def test_connect_failure_is_actionable(arun: Runner) -> None:
    async def main() -> None:
        client = RosbridgeClient("127.0.0.1", 1, connect_timeout=0.5, reconnect_min=0.05, reconnect_max=0.1)
        with pytest.raises(ConnectionError, match="rosbridge_server running"):
            await client.connect()
        with pytest.raises(ValueError, match="port"):
            RosbridgeClient("127.0.0.1", 0)

    arun(main())
