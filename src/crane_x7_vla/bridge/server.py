"""A rosbridge-v2-compatible asyncio server: the ROS graph for the simulated robot and for tests.

Design: the server is a tiny in-memory ROS graph. Topics fan out to every subscribed connection (and to
in-process subscribers); services and actions are served in-process (the sim bridge registers them with
:meth:`RosbridgeServer.add_service` / :meth:`add_action_server`) or forwarded to the client that advertised
them, mapping request ids both ways. Frames are parsed by the pure :mod:`.protocol` module.

Unlike the ROS 2 rosbridge_server (rosbridge_suite #564), memory per client is bounded: each subscription
owns a drop-oldest queue (``queue_length``, or :data:`DEFAULT_QUEUE` when 0) drained by one sender task per
connection that honours ``throttle_rate``; a slow client therefore sees the newest messages, never a growing
backlog. A message fanned out to many subscribers is encoded at most once per wire format.

Malformed frames are logged (rate-limited) and skipped; the connection stays open; the server never dies of
a client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import inspect
import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from crane_x7_vla.bridge import protocol as P
from crane_x7_vla.bridge._support import ActionHandler, RateLimitedLog, ServiceHandler, call_handler, run_goal
from crane_x7_vla.bridge.messages import normalize_type
from crane_x7_vla.bridge.protocol import FragmentAssembler, ProtocolError

log = logging.getLogger(__name__)

DEFAULT_QUEUE = 100  # per-subscription bound when the client asked for queue_length 0 (rosbridge: unbounded)
CONTROL_QUEUE = 1000  # per-connection bound on service/action traffic waiting to be sent
MAX_LOCAL_INFLIGHT = 100  # async in-process subscriber calls running at once per subscriber

# uint8[] fields arrive base64-encoded from JSON clients; decoding them once at ingress lets CBOR subscribers
# get raw byte strings (what the real server does after deserialising into a ROS message).
_BYTE_FIELDS: dict[str, tuple[str, ...]] = {
    "sensor_msgs/CompressedImage": ("data",),
    "sensor_msgs/Image": ("data",),
}


@dataclass(eq=False)
class _Outgoing:
    """One published message on its way to N subscribers; each wire encoding is computed once."""

    topic: str
    msg: dict[str, Any]
    _json: str | None = None
    _cbor: bytes | None = None

    def json_text(self) -> str:
        if self._json is None:
            self._json = P.encode_json({"op": "publish", "topic": self.topic, "msg": self.msg})
        return self._json

    def cbor(self) -> bytes:
        if self._cbor is None:
            self._cbor = P.encode_cbor({"op": "publish", "topic": self.topic, "msg": self.msg})
        return self._cbor


@dataclass(eq=False)
class _Sub:
    topic: str
    ids: set[str]
    compression: str
    throttle_s: float
    fragment_size: int | None
    queue: deque[_Outgoing]
    next_time: float = 0.0
    dropped: int = 0


@dataclass(eq=False)
class _Session:
    ws: ServerConnection
    name: str
    subs: dict[str, _Sub] = field(default_factory=dict)
    control: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=CONTROL_QUEUE))
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    advertised: dict[str, str] = field(default_factory=dict)
    services: set[str] = field(default_factory=set)
    actions: set[str] = field(default_factory=set)
    assembler: FragmentAssembler = field(default_factory=lambda: FragmentAssembler(max_bytes=64 * 1024 * 1024))
    level: str = "error"
    frag_ids: itertools.count[int] = field(default_factory=itertools.count)

    def push(self, sub: _Sub, out: _Outgoing) -> None:
        if len(sub.queue) == sub.queue.maxlen:
            sub.dropped += 1  # drop-oldest: deque(maxlen) evicts the head on append
        sub.queue.append(out)
        self.wake.set()

    def send_op(self, op: dict[str, Any]) -> None:
        if len(self.control) == self.control.maxlen:
            log.warning("client %s is not reading; dropping its oldest queued %s", self.name,
                        self.control[0].get("op"))
        self.control.append(op)
        self.wake.set()


@dataclass(eq=False)
class _LocalSub:
    callback: Callable[[dict[str, Any]], Any]
    inflight: int = 0
    dropped: int = 0


class RosbridgeServer:
    """``async with RosbridgeServer(port=0) as server: ... server.port ...``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9090, *, max_size: int = 10 * 1024 * 1024,
                 ping_interval: float | None = 20.0, ping_timeout: float | None = 20.0) -> None:
        self.host = host
        self._requested_port = port
        self._max_size = max_size
        self._ping = (ping_interval, ping_timeout)
        self._server: Server | None = None
        self._sessions: set[_Session] = set()
        self._names = itertools.count(1)
        self._ids = itertools.count(1)
        self._bad = RateLimitedLog(log)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._topic_types: dict[str, str] = {}
        self._local_subs: dict[str, list[_LocalSub]] = {}
        self._local_services: dict[str, tuple[str, ServiceHandler]] = {}
        self._local_actions: dict[str, tuple[str, ActionHandler]] = {}
        self._remote_services: dict[str, _Session] = {}
        self._remote_actions: dict[str, _Session] = {}
        # forwarded request id -> (caller session, caller's id, provider session)
        self._fwd_calls: dict[str, tuple[_Session, Any, _Session]] = {}
        self._fwd_goals: dict[str, tuple[_Session, Any, _Session]] = {}
        self._local_goals: dict[tuple[_Session, str], asyncio.Task[None]] = {}

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``); the requested one before :meth:`start`."""
        if self._server is None:
            return self._requested_port
        return int(next(iter(self._server.sockets)).getsockname()[1])

    @property
    def connections(self) -> int:
        return len(self._sessions)

    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = await serve(
            self._handle, self.host, self._requested_port, max_size=self._max_size, compression=None,
            ping_interval=self._ping[0], ping_timeout=self._ping[1], max_queue=64, close_timeout=1.0)
        log.info("rosbridge server listening on ws://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        log.info("rosbridge server stopped")

    async def __aenter__(self) -> RosbridgeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ in-process API (the sim robot)
    def publish(self, topic: str, msg_type: str, msg: Any) -> None:
        """Publish to every subscriber (clients and in-process); never blocks. ``msg``: dict or dataclass."""
        if hasattr(msg, "to_dict"):
            msg = msg.to_dict()
        if not isinstance(msg, dict):
            raise TypeError(f"publish({topic!r}): msg must be a dict or a messages dataclass, got {type(msg).__name__}")
        self._topic_types.setdefault(topic, normalize_type(msg_type))
        self._route(topic, msg)

    def add_subscriber(self, topic: str, callback: Callable[[dict[str, Any]], Any]) -> Callable[[], None]:
        """See what clients publish on ``topic``; ``callback(msg)`` sync or async. Returns an unsubscribe."""
        local = _LocalSub(callback)
        self._local_subs.setdefault(topic, []).append(local)

        def remove() -> None:
            subs = self._local_subs.get(topic, [])
            if local in subs:
                subs.remove(local)

        return remove

    def add_service(self, name: str, srv_type: str, handler: ServiceHandler) -> None:
        """Serve ``name``: ``handler(args) -> values`` (sync or async); an exception answers result=false."""
        self._local_services[name] = (normalize_type(srv_type), handler)

    def add_action_server(self, name: str, action_type: str, handler: ActionHandler) -> None:
        """Serve a ROS 2 action: ``async handler(goal_args, feedback) -> result``; cancel = CancelledError."""
        self._local_actions[name] = (normalize_type(action_type), handler)

    # ------------------------------------------------------------------ routing
    def _route(self, topic: str, msg: dict[str, Any]) -> None:
        out = _Outgoing(topic, msg)
        for session in self._sessions:
            sub = session.subs.get(topic)
            if sub is not None:
                session.push(sub, out)
        for local in self._local_subs.get(topic, ()):
            self._call_local(topic, local, msg)

    def _call_local(self, topic: str, local: _LocalSub, msg: dict[str, Any]) -> None:
        try:
            result = local.callback(msg)
        except Exception:
            self._bad.log(logging.ERROR, f"local:{topic}", "in-process subscriber of %s failed", topic,
                          exc_info=True)
            return
        if inspect.isawaitable(result):
            if local.inflight >= MAX_LOCAL_INFLIGHT:
                local.dropped += 1  # bounded: a stuck async subscriber cannot pile up tasks
                if inspect.iscoroutine(result):
                    result.close()
                return
            local.inflight += 1

            async def run() -> None:
                try:
                    await result
                except Exception:
                    self._bad.log(logging.ERROR, f"local:{topic}", "in-process subscriber of %s failed",
                                  topic, exc_info=True)
                finally:
                    local.inflight -= 1

            self._spawn(run())

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ connections
    async def _handle(self, ws: ServerConnection) -> None:
        session = _Session(ws, f"client{next(self._names)}@{ws.remote_address}")
        self._sessions.add(session)
        log.info("rosbridge client connected: %s", session.name)
        sender = asyncio.create_task(self._sender(session))
        try:
            async for frame in ws:
                self._on_frame(session, frame)
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
            self._drop_session(session)
            log.info("rosbridge client disconnected: %s", session.name)

    def _drop_session(self, session: _Session) -> None:
        self._sessions.discard(session)
        for name in session.services:
            if self._remote_services.get(name) is session:
                del self._remote_services[name]
        for name in session.actions:
            if self._remote_actions.get(name) is session:
                del self._remote_actions[name]
        for fid, (caller, cid, provider) in list(self._fwd_calls.items()):
            if provider is session:
                del self._fwd_calls[fid]
                caller.send_op({"op": "service_response", "id": cid, "service": "", "result": False,
                                "values": "the client providing this service disconnected"})
            elif caller is session:
                del self._fwd_calls[fid]
        for fid, (caller, gid, provider) in list(self._fwd_goals.items()):
            if provider is session:
                del self._fwd_goals[fid]
                caller.send_op({"op": "action_result", "id": gid, "action": "", "result": False,
                                "status": int(P.GoalStatus.ABORTED),
                                "values": "the client providing this action disconnected"})
            elif caller is session:  # nobody will read the result: stop the goal
                del self._fwd_goals[fid]
                provider.send_op({"op": "cancel_action_goal", "id": fid, "action": ""})
        for (owner, gid), task in list(self._local_goals.items()):
            if owner is session:
                task.cancel()
                self._local_goals.pop((owner, gid), None)

    async def _sender(self, session: _Session) -> None:
        """Drain the session's queues: control ops first, then subscriptions round-robin under throttle."""
        loop = asyncio.get_running_loop()
        ws = session.ws
        try:
            while True:
                session.wake.clear()  # before looking, so an enqueue during our sends re-arms it
                sent = False
                while session.control:
                    await ws.send(P.encode_json(session.control.popleft()))
                    sent = True
                now = loop.time()
                next_due: float | None = None
                for sub in list(session.subs.values()):
                    if not sub.queue:
                        continue
                    if now < sub.next_time:
                        next_due = sub.next_time if next_due is None else min(next_due, sub.next_time)
                        continue
                    out = sub.queue.popleft()
                    sub.next_time = now + sub.throttle_s
                    for frame in self._frames(session, sub, out):
                        await ws.send(frame)
                    sent = True
                if sent:
                    continue
                timeout = None if next_due is None else max(0.0, next_due - loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.wake.wait(), timeout)
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sender for %s failed; closing that connection", session.name)
            await ws.close(1011, "internal error")

    def _frames(self, session: _Session, sub: _Sub, out: _Outgoing) -> list[str | bytes]:
        try:
            if sub.compression in ("cbor", "cbor-raw"):
                return [out.cbor()]
            text = out.json_text()
            if sub.compression == "png":
                return [P.encode_json({"op": "png", "data": P.png_encode(text)})]
            if sub.fragment_size and len(text) > sub.fragment_size:
                fid = f"{sub.topic}:{next(session.frag_ids)}"
                return [P.encode_json(f) for f in P.fragment_text(text, sub.fragment_size, fid)]
            return [text]
        except ProtocolError as exc:
            self._bad.log(logging.WARNING, f"encode:{sub.topic}", "cannot encode a message on %s: %s",
                          sub.topic, exc)
            return []

    # ------------------------------------------------------------------ incoming ops
    def _on_frame(self, session: _Session, frame: str | bytes) -> None:
        try:
            if isinstance(frame, bytes):
                # Like rosbridge: incoming frames are JSON; a binary frame may still carry JSON text.
                try:
                    frame = frame.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            op: dict[str, Any] | None = P.decode_frame(frame, arrays="list")
            if op is not None and op["op"] == "fragment":
                op = session.assembler.add(op, arrays="list")
            if op is None:
                return
            if op["op"] == "png":
                op = P.decode_frame(P.png_decode(op["data"]), arrays="list")
            self._dispatch(session, op)
        except ProtocolError as exc:
            self._bad.log(logging.WARNING, f"bad:{session.name}", "skipping malformed frame from %s: %s",
                          session.name, exc)
        except Exception:  # never let one client's frame kill its connection or the server
            self._bad.log(logging.ERROR, f"err:{session.name}", "error handling a frame from %s",
                          session.name, exc_info=True)

    def _dispatch(self, s: _Session, op: dict[str, Any]) -> None:
        handler = getattr(self, f"_op_{op['op']}", None)
        if handler is None:
            raise ProtocolError(f"op {op['op']!r} is not accepted from clients")
        handler(s, op)

    def _op_advertise(self, s: _Session, op: dict[str, Any]) -> None:
        topic, msg_type = op["topic"], normalize_type(op["type"])
        known = self._topic_types.setdefault(topic, msg_type)
        if known != msg_type:
            self._bad.log(logging.WARNING, f"type:{topic}", "%s advertises %s as %s, already %s", s.name, topic,
                          msg_type, known)
        s.advertised[topic] = msg_type

    def _op_unadvertise(self, s: _Session, op: dict[str, Any]) -> None:
        s.advertised.pop(op["topic"], None)

    def _op_publish(self, s: _Session, op: dict[str, Any]) -> None:
        topic, msg = op["topic"], op["msg"]
        msg_type = s.advertised.get(topic) or self._topic_types.get(topic)
        for name in _BYTE_FIELDS.get(msg_type or "", ()):
            value = msg.get(name)
            if isinstance(value, str):
                try:
                    msg = {**msg, name: base64.b64decode(value, validate=True)}
                except (binascii.Error, ValueError) as exc:
                    raise ProtocolError(f"publish on {topic}: field {name!r} is not valid base64") from exc
        self._route(topic, msg)

    def _op_subscribe(self, s: _Session, op: dict[str, Any]) -> None:
        topic = op["topic"]
        if op.get("type"):
            self._topic_types.setdefault(topic, normalize_type(op["type"]))
        queue_length = int(op.get("queue_length") or 0)
        throttle_s = float(op.get("throttle_rate") or 0) / 1000.0
        maxlen = queue_length if queue_length > 0 else (1 if throttle_s > 0 else DEFAULT_QUEUE)
        sub_id = str(op.get("id", ""))
        compression = op.get("compression") or "none"
        if compression == "cbor-raw":
            self._bad.log(logging.INFO, "cbor-raw", "cbor-raw (serialised ROS bytes) is served as cbor here")
        old = s.subs.get(topic)
        queue: deque[_Outgoing] = deque(old.queue if old else (), maxlen=maxlen)
        s.subs[topic] = _Sub(topic, (old.ids if old else set()) | {sub_id}, compression, throttle_s,
                             op.get("fragment_size"), queue, old.next_time if old else 0.0)

    def _op_unsubscribe(self, s: _Session, op: dict[str, Any]) -> None:
        sub = s.subs.get(op["topic"])
        if sub is None:
            return
        sub.ids.discard(str(op.get("id", "")))
        if "id" not in op or not sub.ids:
            del s.subs[op["topic"]]

    def _op_call_service(self, s: _Session, op: dict[str, Any]) -> None:
        service, cid, args = op["service"], op.get("id"), op.get("args") or {}
        if service in self._local_services:
            handler = self._local_services[service][1]

            async def serve_local() -> None:
                try:
                    values, ok = await call_handler(handler, args), True
                except Exception as exc:
                    values, ok = f"{type(exc).__name__}: {exc}", False
                s.send_op(P.service_response(service, values, ok, op_id=cid))

            self._spawn(serve_local())
        elif service in self._remote_services:
            provider = self._remote_services[service]
            fid = f"fwd_call:{next(self._ids)}"
            self._fwd_calls[fid] = (s, cid, provider)
            provider.send_op(P.call_service(service, args, op_id=fid))
        else:
            s.send_op(P.service_response(service, f"service {service!r} is not advertised", False, op_id=cid))

    def _op_service_response(self, s: _Session, op: dict[str, Any]) -> None:
        entry = self._fwd_calls.pop(str(op.get("id")), None)
        if entry is None:
            raise ProtocolError(f"service_response with unknown id {op.get('id')!r}")
        caller, cid, _ = entry
        caller.send_op({**op, "id": cid} if cid is not None else {k: v for k, v in op.items() if k != "id"})

    def _op_advertise_service(self, s: _Session, op: dict[str, Any]) -> None:
        self._remote_services[op["service"]] = s
        s.services.add(op["service"])

    def _op_unadvertise_service(self, s: _Session, op: dict[str, Any]) -> None:
        if self._remote_services.get(op["service"]) is s:
            del self._remote_services[op["service"]]
        s.services.discard(op["service"])

    def _op_advertise_action(self, s: _Session, op: dict[str, Any]) -> None:
        self._remote_actions[op["action"]] = s
        s.actions.add(op["action"])

    def _op_unadvertise_action(self, s: _Session, op: dict[str, Any]) -> None:
        if self._remote_actions.get(op["action"]) is s:
            del self._remote_actions[op["action"]]
        s.actions.discard(op["action"])

    def _op_send_action_goal(self, s: _Session, op: dict[str, Any]) -> None:
        action, gid, args = op["action"], op.get("id", ""), op.get("args") or {}
        want_feedback = bool(op.get("feedback", False))
        if action in self._local_actions:
            handler = self._local_actions[action][1]

            async def feedback(values: Any) -> None:
                if want_feedback:
                    s.send_op(P.action_feedback(action, values, op_id=gid))

            async def serve_goal() -> None:
                status, values, ok = await run_goal(handler, args, feedback)
                s.send_op(P.action_result(action, values, status, ok, op_id=gid))

            def done(t: asyncio.Task[Any]) -> None:
                self._local_goals.pop((s, str(gid)), None)
                if t.cancelled():  # canceled before its first step: the coroutine never ran to answer
                    s.send_op(P.action_result(action, {}, P.GoalStatus.CANCELED, True, op_id=gid))

            task = self._spawn(serve_goal())
            task.add_done_callback(done)
            self._local_goals[(s, str(gid))] = task
        elif action in self._remote_actions:
            provider = self._remote_actions[action]
            fid = f"fwd_goal:{next(self._ids)}"
            self._fwd_goals[fid] = (s, gid, provider)
            provider.send_op({**op, "id": fid, "feedback": want_feedback})
        else:
            s.send_op(P.action_result(action, f"action {action!r} is not advertised", int(P.GoalStatus.ABORTED),
                                      False, op_id=gid))

    def _op_cancel_action_goal(self, s: _Session, op: dict[str, Any]) -> None:
        gid = str(op["id"])
        task = self._local_goals.get((s, gid))
        if task is not None:
            task.cancel()
            return
        for fid, (caller, cgid, provider) in self._fwd_goals.items():
            if caller is s and str(cgid) == gid:
                provider.send_op({**op, "id": fid})
                return

    def _forward_goal_op(self, op: dict[str, Any], final: bool) -> None:
        fid = str(op["id"])
        entry = self._fwd_goals.pop(fid, None) if final else self._fwd_goals.get(fid)
        if entry is None:
            raise ProtocolError(f"{op['op']} for unknown goal id {fid!r}")
        caller, gid, _ = entry
        caller.send_op({**op, "id": gid})

    def _op_action_feedback(self, s: _Session, op: dict[str, Any]) -> None:
        self._forward_goal_op(op, final=False)

    def _op_action_result(self, s: _Session, op: dict[str, Any]) -> None:
        self._forward_goal_op(op, final=True)

    def _op_set_level(self, s: _Session, op: dict[str, Any]) -> None:
        s.level = op["level"]

    def _op_status(self, s: _Session, op: dict[str, Any]) -> None:
        log.info("status from %s: [%s] %s", s.name, op["level"], op["msg"])
