"""asyncio rosbridge v2 client on ``websockets`` (new asyncio API) with CBOR receive and auto-reconnect.

Design: the client keeps the *desired state* (advertised topics, subscriptions, offered services/actions)
and one background task owns the connection: connect -> replay the desired state -> read frames -> on loss,
back off (capped exponential + jitter) and repeat. Callers never see a half-connected client: methods record
intent and send when a link exists. Frames are parsed by the pure :mod:`.protocol` module; this file only
moves bytes and futures.

Liveness comes from websockets' keepalive pings: a peer that stops answering is declared dead after
``ping_interval + ping_timeout`` and the reconnect loop starts. Publishing while disconnected keeps only the
latest message per topic (a robot wants the newest action, not a backlog) and never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from crane_x7_vla.bridge import protocol as P
from crane_x7_vla.bridge._support import (
    ActionHandler,
    RateLimitedLog,
    ServiceHandler,
    backoff_delay,
    call_handler,
    run_goal,
)
from crane_x7_vla.bridge.messages import ActionResult, normalize_type
from crane_x7_vla.bridge.protocol import FragmentAssembler, ProtocolError

log = logging.getLogger(__name__)

Callback = Callable[[dict[str, Any]], Any]
StateListener = Callable[[bool], None]

_WS_MAJOR = int(websockets.__version__.split(".")[0])


class ServiceError(RuntimeError):
    """A service call reached the server but failed (``service_response`` with ``result: false``)."""


@dataclass(eq=False)
class Subscription:
    """A live subscription; pass it to :meth:`RosbridgeClient.unsubscribe`.

    Sync callbacks run inline in the reader (keep them short); async callbacks run in a per-subscription
    worker fed by a bounded drop-oldest queue, so a slow callback delays only itself and never the link.
    """

    topic: str
    msg_type: str | None
    callback: Callback
    queue_length: int
    throttle_rate: int
    compression: str
    sub_id: str
    fragment_size: int | None = None
    received: int = 0
    dropped: int = 0
    _queue: deque[dict[str, Any]] = field(default_factory=deque)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _worker: asyncio.Task[None] | None = None

    def subscribe_op(self) -> dict[str, Any]:
        return P.subscribe(self.topic, self.msg_type, op_id=self.sub_id, throttle_rate=self.throttle_rate,
                           queue_length=self.queue_length, compression=self.compression,
                           fragment_size=self.fragment_size)


@dataclass(eq=False)
class ActionGoalHandle:
    """A goal sent with :meth:`RosbridgeClient.send_action_goal`: await :meth:`result`, or :meth:`cancel`."""

    goal_id: str
    action: str
    _client: RosbridgeClient
    _future: asyncio.Future[ActionResult]
    _feedback_cb: Callable[[Any], Any] | None = None

    @property
    def done(self) -> bool:
        return self._future.done()

    async def result(self, timeout: float | None = None) -> ActionResult:
        """Wait for the goal's end. Raises TimeoutError, or ConnectionError if the link dropped first."""
        return await asyncio.wait_for(asyncio.shield(self._future), timeout)

    async def cancel(self) -> None:
        """Ask the server to cancel; the result (status CANCELED) still arrives through :meth:`result`."""
        if not self._future.done():
            await self._client._send(P.cancel_action_goal(self.action, op_id=self.goal_id))


class RosbridgeClient:
    """rosbridge v2 client. ``async with RosbridgeClient("localhost", 9090) as ros: ...``.

    ``proxy``: ``None`` = direct connection; a URL such as ``"socks5h://localhost:1055"`` (Tailscale
    userspace networking, needs python-socks); ``True`` = take it from ``ALL_PROXY``/``https_proxy``.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 9090,
        *,
        proxy: str | bool | None = None,
        ping_interval: float = 5.0,
        ping_timeout: float = 5.0,
        reconnect_min: float = 0.25,
        reconnect_max: float = 10.0,
        connect_timeout: float = 10.0,
        max_size: int = 64 * 1024 * 1024,
        arrays: P.ArrayMode = "numpy",
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}")
        if reconnect_min <= 0 or reconnect_max < reconnect_min:
            raise ValueError(f"need 0 < reconnect_min <= reconnect_max, got {reconnect_min}, {reconnect_max}")
        if proxy not in (None, False) and _WS_MAJOR < 15:
            raise ValueError(f"proxy support needs websockets >= 15 (installed {websockets.__version__}); "
                             "pip install -U 'websockets>=15' python-socks")
        self.host, self.port = host, port
        self.uri = f"ws://{host}:{port}"
        self._proxy = proxy
        self._ping_interval, self._ping_timeout = ping_interval, ping_timeout
        self._reconnect_min, self._reconnect_max = reconnect_min, reconnect_max
        self._connect_timeout = connect_timeout
        self._max_size = max_size
        self._arrays = arrays
        self._ids = itertools.count(1)
        self._ws: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._runner: asyncio.Task[None] | None = None
        self._listeners: list[StateListener] = []
        self._assembler = FragmentAssembler()
        self._bad = RateLimitedLog(log)
        self._last_error: str = ""
        self._background: set[asyncio.Task[Any]] = set()
        # Desired state, replayed on every (re)connect.
        self._advertised: dict[str, str] = {}
        self._subs: dict[str, list[Subscription]] = {}
        self._services: dict[str, tuple[str, ServiceHandler]] = {}
        self._actions: dict[str, tuple[str, ActionHandler]] = {}
        self._latest: dict[str, dict[str, Any]] = {}  # publish while disconnected: newest per topic
        # In-flight requests, failed on disconnect.
        self._calls: dict[str, asyncio.Future[Any]] = {}
        self._goals: dict[str, ActionGoalHandle] = {}
        self._serving_goals: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.reconnects = 0  # successful connections after the first

    # ------------------------------------------------------------------ lifecycle
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the link is up (and the desired state replayed); TimeoutError after ``timeout``."""
        await asyncio.wait_for(self._connected.wait(), timeout)

    def add_state_listener(self, listener: StateListener) -> None:
        """``listener(True)`` after each (re)connect, ``listener(False)`` when the link is lost."""
        self._listeners.append(listener)

    async def connect(self) -> None:
        """Start the connection task and wait for the first connection (``connect_timeout``)."""
        if self._runner is None:
            self._closing = False
            self._runner = asyncio.create_task(self._run(), name=f"rosbridge-client {self.uri}")
        try:
            await self.wait_connected(self._connect_timeout)
        except TimeoutError:
            await self.close()
            raise ConnectionError(
                f"could not connect to rosbridge at {self.uri} within {self._connect_timeout:g}s "
                f"({self._last_error or 'no answer'}). Is rosbridge_server running and the port reachable "
                "(ssh tunnel / tailscale up)?") from None

    async def close(self) -> None:
        self._closing = True
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        for task in list(self._background) + [s._worker for subs in self._subs.values() for s in subs
                                              if s._worker is not None]:
            task.cancel()
        self._fail_pending(ConnectionError("client closed"))

    async def __aenter__(self) -> RosbridgeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ topics
    async def advertise(self, topic: str, msg_type: str) -> None:
        msg_type = normalize_type(msg_type)
        if self._advertised.get(topic) == msg_type:
            return
        self._advertised[topic] = msg_type
        await self._send(P.advertise(topic, msg_type))

    async def unadvertise(self, topic: str) -> None:
        if self._advertised.pop(topic, None) is not None:
            self._latest.pop(topic, None)
            await self._send(P.unadvertise(topic))

    async def publish(self, topic: str, msg: Any, msg_type: str | None = None) -> None:
        """Publish a dict or a :mod:`.messages` dataclass; advertises on first use.

        Never blocks on a missing link: while disconnected only the newest message per topic is kept and
        sent right after reconnecting.
        """
        if hasattr(msg, "to_dict"):
            msg_type = msg_type or getattr(msg, "TYPE", None)
            msg = msg.to_dict()
        if not isinstance(msg, dict):
            raise TypeError(f"publish({topic!r}): msg must be a dict or a messages dataclass, got {type(msg).__name__}")
        if topic not in self._advertised:
            if msg_type is None:
                raise ValueError(f"publish({topic!r}): unknown type; call advertise(topic, type) first or pass "
                                 "msg_type / a messages dataclass")
            await self.advertise(topic, msg_type)
        op = P.publish(topic, msg)
        P.encode_json(op)  # fail here, in the caller, on an unencodable message
        if not await self._send(op):
            self._latest[topic] = msg

    async def subscribe(
        self,
        topic: str,
        msg_type: str | None,
        callback: Callback,
        *,
        queue_length: int = 0,
        throttle_rate: int = 0,
        compression: str = "none",
        fragment_size: int | None = None,
    ) -> Subscription:
        """Subscribe; ``callback(msg_dict)`` (sync or async) gets each message.

        For camera topics use ``compression="cbor", queue_length=1`` and a ``throttle_rate`` (ms) matched to
        the consumer: the server then drops old frames instead of queueing them.
        """
        if compression not in P.COMPRESSIONS:
            raise ValueError(f"compression must be one of {P.COMPRESSIONS}, got {compression!r}")
        sub = Subscription(topic, normalize_type(msg_type) if msg_type else None, callback, queue_length,
                           throttle_rate, compression, f"subscribe:{topic}:{next(self._ids)}", fragment_size)
        sub._queue = deque(maxlen=queue_length if queue_length > 0 else 100)
        if inspect.iscoroutinefunction(callback):
            sub._worker = asyncio.create_task(self._callback_worker(sub), name=f"rosbridge-sub {topic}")
        self._subs.setdefault(topic, []).append(sub)
        await self._send(sub.subscribe_op())
        return sub

    async def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.topic, [])
        if sub in subs:
            subs.remove(sub)
            if not subs:
                del self._subs[sub.topic]
            if sub._worker is not None:
                sub._worker.cancel()
            await self._send(P.unsubscribe(sub.topic, op_id=sub.sub_id))

    # ------------------------------------------------------------------ services
    async def call_service(self, service: str, args: dict[str, Any] | None = None,
                           timeout: float = 10.0) -> Any:
        """Call a ROS service; returns its ``values``. Raises ServiceError, TimeoutError or ConnectionError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await self.wait_connected(timeout)
        except TimeoutError:
            raise TimeoutError(f"call_service({service!r}): not connected to {self.uri} within {timeout:g}s") from None
        call_id = f"call_service:{service}:{next(self._ids)}"
        fut: asyncio.Future[Any] = loop.create_future()
        self._calls[call_id] = fut
        try:
            if not await self._send(P.call_service(service, args or {}, op_id=call_id)):
                raise ConnectionError(f"call_service({service!r}): connection to {self.uri} lost while sending")
            return await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise TimeoutError(f"service {service!r} did not answer within {timeout:g}s") from None
        finally:
            self._calls.pop(call_id, None)

    async def advertise_service(self, service: str, srv_type: str, handler: ServiceHandler) -> None:
        """Offer a service to the ROS graph: ``handler(args) -> values`` (sync or async)."""
        self._services[service] = (normalize_type(srv_type), handler)
        await self._send(P.advertise_service(service, normalize_type(srv_type)))

    async def unadvertise_service(self, service: str) -> None:
        if self._services.pop(service, None) is not None:
            await self._send(P.unadvertise_service(service))

    # ------------------------------------------------------------------ actions
    async def send_action_goal(
        self,
        action: str,
        action_type: str,
        args: dict[str, Any],
        *,
        feedback_cb: Callable[[Any], Any] | None = None,
    ) -> ActionGoalHandle:
        """Send a ROS 2 action goal. ``await handle.result()`` gives an :class:`ActionResult`."""
        if hasattr(args, "to_dict"):
            args = args.to_dict()
        goal_id = f"send_action_goal:{action}:{next(self._ids)}"
        handle = ActionGoalHandle(goal_id, action, self, asyncio.get_running_loop().create_future(), feedback_cb)
        # A goal nobody awaits may fail on disconnect; mark its exception retrieved so asyncio stays quiet.
        handle._future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._goals[goal_id] = handle
        op = P.send_action_goal(action, normalize_type(action_type), args, op_id=goal_id,
                                feedback=feedback_cb is not None)
        if not await self._send(op):
            self._goals.pop(goal_id, None)
            raise ConnectionError(f"send_action_goal({action!r}): not connected to {self.uri}")
        return handle

    async def advertise_action(self, action: str, action_type: str, handler: ActionHandler) -> None:
        """Offer an action server: ``async handler(goal_args, feedback) -> result values``."""
        self._actions[action] = (normalize_type(action_type), handler)
        await self._send(P.advertise_action(action, normalize_type(action_type)))

    async def unadvertise_action(self, action: str) -> None:
        if self._actions.pop(action, None) is not None:
            await self._send(P.unadvertise_action(action))

    # ------------------------------------------------------------------ internals: sending
    async def _send(self, op: dict[str, Any]) -> bool:
        """Send one op if connected; False (never an exception) when there is no usable link."""
        ws = self._ws
        if ws is None:
            return False
        text = P.encode_json(op)
        try:
            await ws.send(text)
        except ConnectionClosed:
            return False
        return True

    # ------------------------------------------------------------------ internals: connection loop
    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            # Our own keepalive (see _keepalive): websockets' would wait close_timeout more for a dead peer.
            "ping_interval": None,
            "open_timeout": self._connect_timeout, "close_timeout": 1.0, "max_size": self._max_size,
            # JPEG payloads do not deflate; compressing costs latency for nothing.
            "compression": None, "max_queue": 64,
        }
        if _WS_MAJOR >= 15:
            kwargs["proxy"] = self._proxy if self._proxy not in (None, False) else None
        return kwargs

    async def _run(self) -> None:
        attempt = 0
        ever_connected = False
        while not self._closing:
            try:
                ws = await ws_connect(self.uri, **self._connect_kwargs())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # OSError, TimeoutError, InvalidHandshake, proxy errors...
                error = f"{type(exc).__name__}: {exc}"
                if attempt == 0 or error != self._last_error:
                    log.warning("rosbridge %s unreachable (%s); retrying with backoff", self.uri, error)
                self._last_error = error
                delay = backoff_delay(attempt, self._reconnect_min, self._reconnect_max, random.random())
                attempt += 1
                await asyncio.sleep(delay)
                continue
            attempt = 0
            self._last_error = ""
            self._ws = ws
            keepalive = asyncio.create_task(self._keepalive(ws)) if self._ping_interval > 0 else None
            try:
                await self._replay()
                self.reconnects += ever_connected
                ever_connected = True
                self._set_state(True)
                log.info("connected to rosbridge %s", self.uri)
                async for frame in ws:
                    self._on_frame(frame)
            except ConnectionClosed:
                pass
            finally:
                if keepalive is not None:
                    keepalive.cancel()
                self._ws = None
                was_connected = self.connected
                self._set_state(False)
                self._fail_pending(ConnectionError(f"connection to rosbridge {self.uri} lost"))
                if not self._closing:
                    if was_connected:
                        log.warning("lost connection to rosbridge %s (%s); reconnecting", self.uri,
                                    ws.close_reason or ws.close_code or "closed")
                else:
                    await ws.close()

    async def _keepalive(self, ws: ClientConnection) -> None:
        """Ping every ``ping_interval``; no pong within ``ping_timeout`` = dead link, dropped at once.

        Aborting the transport (instead of a close handshake the dead peer would never answer) ends the
        reader immediately, so detection takes at most ``ping_interval + ping_timeout``.
        """
        while True:
            await asyncio.sleep(self._ping_interval)  # a periodic timer, not synchronisation
            try:
                pong = await ws.ping()
                await asyncio.wait_for(pong, self._ping_timeout)
            except TimeoutError:
                log.warning("rosbridge %s did not answer a ping within %gs; dropping the link", self.uri,
                            self._ping_timeout)
                ws.transport.abort()
                return
            except ConnectionClosed:
                return

    async def _replay(self) -> None:
        """Re-create the desired state on a fresh link (the server forgets everything on disconnect)."""
        for topic, msg_type in self._advertised.items():
            await self._send(P.advertise(topic, msg_type))
        for service, (srv_type, _) in self._services.items():
            await self._send(P.advertise_service(service, srv_type))
        for action, (action_type, _) in self._actions.items():
            await self._send(P.advertise_action(action, action_type))
        for subs in self._subs.values():
            for sub in subs:
                await self._send(sub.subscribe_op())
        latest, self._latest = self._latest, {}
        for topic, msg in latest.items():
            if topic in self._advertised and not await self._send(P.publish(topic, msg)):
                self._latest[topic] = msg

    def _set_state(self, up: bool) -> None:
        if up == self._connected.is_set():
            return
        if up:
            self._connected.set()
        else:
            self._connected.clear()
        for listener in list(self._listeners):
            try:
                listener(up)
            except Exception:
                log.exception("rosbridge state listener failed")

    def _fail_pending(self, exc: Exception) -> None:
        calls, self._calls = self._calls, {}
        for fut in calls.values():
            if not fut.done():
                fut.set_exception(exc)
        goals, self._goals = self._goals, {}
        for handle in goals.values():
            if not handle._future.done():
                handle._future.set_exception(exc)
        for task in self._serving_goals.values():
            task.cancel()  # the caller is gone with the link; stop work nobody can receive
        self._serving_goals.clear()

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ internals: receiving
    def _on_frame(self, frame: str | bytes) -> None:
        try:
            op: dict[str, Any] | None = P.decode_frame(frame, arrays=self._arrays)
            if op is not None and op["op"] == "fragment":
                op = self._assembler.add(op, arrays=self._arrays)
            if op is None:
                return
            if op["op"] == "png":
                op = P.decode_frame(P.png_decode(op["data"]), arrays=self._arrays)
            self._dispatch(op)
        except ProtocolError as exc:
            self._bad.log(logging.WARNING, "bad-frame", "skipping malformed rosbridge frame: %s", exc)
        except Exception:  # a bug in a handler must not kill the reader (and with it the link)
            self._bad.log(logging.ERROR, "dispatch", "error handling a rosbridge frame", exc_info=True)

    def _dispatch(self, op: dict[str, Any]) -> None:
        kind = op["op"]
        if kind == "publish":
            msg = op["msg"]
            for sub in self._subs.get(op["topic"], ()):
                self._deliver(sub, msg)
        elif kind == "service_response":
            fut = self._calls.pop(str(op.get("id")), None)
            if fut is None or fut.done():
                return
            if op["result"]:
                fut.set_result(op.get("values"))
            else:
                fut.set_exception(ServiceError(f"service {op['service']!r} failed: {op.get('values')}"))
        elif kind == "action_feedback":
            handle = self._goals.get(str(op["id"]))
            if handle is not None and handle._feedback_cb is not None:
                self._spawn(call_handler(handle._feedback_cb, op["values"]), "rosbridge-feedback")
        elif kind == "action_result":
            handle = self._goals.pop(str(op["id"]), None)
            if handle is not None and not handle._future.done():
                handle._future.set_result(ActionResult.from_op(op))
        elif kind == "call_service":
            self._spawn(self._serve_call(op), f"rosbridge-service {op['service']}")
        elif kind == "send_action_goal":
            key = (op["action"], str(op.get("id")))
            task = asyncio.ensure_future(self._serve_goal(op))
            self._serving_goals[key] = task

            def done(t: asyncio.Task[None]) -> None:
                self._serving_goals.pop(key, None)
                if t.cancelled():  # canceled before its first step: the coroutine never ran to answer
                    result = P.action_result(key[0], {}, P.GoalStatus.CANCELED, True, op_id=op.get("id", ""))
                    self._spawn(self._send(result), "rosbridge-goal-canceled")

            task.add_done_callback(done)
        elif kind == "cancel_action_goal":
            serving = self._serving_goals.get((op["action"], str(op["id"])))
            if serving is not None:
                serving.cancel()
        elif kind == "status":
            level = {"error": logging.ERROR, "warning": logging.WARNING}.get(op["level"], logging.INFO)
            self._bad.log(level, f"status-{op['level']}", "rosbridge status: %s", op["msg"])

    def _deliver(self, sub: Subscription, msg: dict[str, Any]) -> None:
        sub.received += 1
        if sub._worker is not None:
            if len(sub._queue) == sub._queue.maxlen:
                sub.dropped += 1
            sub._queue.append(msg)
            sub._wake.set()
            return
        try:
            result = sub.callback(msg)
            if inspect.isawaitable(result):
                self._spawn(result, f"rosbridge-callback {sub.topic}")
        except Exception:
            self._bad.log(logging.ERROR, f"cb:{sub.topic}", "subscriber callback for %s failed", sub.topic,
                          exc_info=True)

    async def _callback_worker(self, sub: Subscription) -> None:
        while True:
            await sub._wake.wait()
            sub._wake.clear()
            while sub._queue:
                msg = sub._queue.popleft()
                try:
                    await sub.callback(msg)
                except Exception:
                    self._bad.log(logging.ERROR, f"cb:{sub.topic}", "subscriber callback for %s failed",
                                  sub.topic, exc_info=True)

    async def _serve_call(self, op: dict[str, Any]) -> None:
        service = op["service"]
        entry = self._services.get(service)
        args = op.get("args") or {}
        if entry is None:
            values: Any = f"service {service!r} is not offered by this client"
            ok = False
        else:
            try:
                values, ok = await call_handler(entry[1], args), True
            except Exception as exc:
                values, ok = f"{type(exc).__name__}: {exc}", False
        await self._send(P.service_response(service, values, ok, op_id=op.get("id")))

    async def _serve_goal(self, op: dict[str, Any]) -> None:
        action, goal_id = op["action"], op.get("id", "")
        entry = self._actions.get(action)
        want_feedback = op.get("feedback", True)

        async def feedback(values: Any) -> None:
            if want_feedback:
                await self._send(P.action_feedback(action, values, op_id=goal_id))

        values: Any
        if entry is None:
            status, values, ok = int(P.GoalStatus.ABORTED), f"action {action!r} is not offered here", False
        else:  # run_goal turns a cancel into CANCELED; a cancel before the first step is done()'s job
            status, values, ok = await run_goal(entry[1], op.get("args") or {}, feedback)
        await self._send(P.action_result(action, values, status, ok, op_id=goal_id))
