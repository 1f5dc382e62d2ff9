"""rosbridge v2 protocol core: op constructors, validation, JSON/CBOR frames, fragments. No I/O.

Design (after python-websockets' sans-I/O core): everything here maps values to values -- dicts to text or
bytes and back -- so it is tested exhaustively without sockets, and ``client.py``/``server.py`` are thin
adapters. Every failure on untrusted input surfaces as exactly one exception type, :class:`ProtocolError`;
the decoders catch whatever the underlying parsers raise and re-raise it as that, so callers need one
``except`` and a fuzzer can check that nothing else ever escapes.

Wire facts (shared/specs/rosbridge.md): clients always send JSON text; servers send JSON text, or a CBOR map
per op for ``compression: cbor``, where ``uint8[]`` is a byte string and other numeric arrays are RFC 8746
little-endian typed arrays. Ops are plain ``dict[str, Any]`` because that is what goes on the wire and what
callers of a dynamic protocol want to index; the constructors guarantee the shape.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final, Literal

import cbor2
import numpy as np

__all__ = [
    "COMPRESSIONS",
    "OPS",
    "FragmentAssembler",
    "GoalStatus",
    "ProtocolError",
    "decode_frame",
    "encode_cbor",
    "encode_json",
    "fragment_text",
    "png_decode",
    "png_encode",
    "validate_op",
]

Op = dict[str, Any]
ArrayMode = Literal["numpy", "list"]


class ProtocolError(ValueError):
    """Anything wrong with a frame, an op or a message: the only exception this layer raises on bad input."""


class GoalStatus(IntEnum):
    """ROS 2 ``action_msgs/GoalStatus`` values carried in ``action_result.status``."""

    UNKNOWN = 0
    ACCEPTED = 1
    EXECUTING = 2
    CANCELING = 3
    SUCCEEDED = 4
    CANCELED = 5
    ABORTED = 6


COMPRESSIONS: Final = ("none", "png", "cbor", "cbor-raw")

# --------------------------------------------------------------------------------------------------
# Op table: required and optional fields with their accepted Python types
# --------------------------------------------------------------------------------------------------
_ID = (str, int)
_NUM = (int, float)
_ANY = (object,)


@dataclass(frozen=True)
class OpSpec:
    """Field schema of one op: name -> accepted types (``bool`` is never accepted where ``int`` is)."""

    required: Mapping[str, tuple[type, ...]]
    optional: Mapping[str, tuple[type, ...]] = field(default_factory=dict)


OPS: Final[Mapping[str, OpSpec]] = {
    "advertise": OpSpec({"topic": (str,), "type": (str,)},
                        {"id": _ID, "latch": (bool,), "queue_size": (int,)}),
    "unadvertise": OpSpec({"topic": (str,)}, {"id": _ID}),
    "publish": OpSpec({"topic": (str,), "msg": (dict,)}, {"id": _ID, "latch": (bool,)}),
    "subscribe": OpSpec({"topic": (str,)}, {
        "id": _ID, "type": (str,), "throttle_rate": _NUM, "queue_length": (int,),
        "fragment_size": (int,), "compression": (str,)}),
    "unsubscribe": OpSpec({"topic": (str,)}, {"id": _ID}),
    "call_service": OpSpec({"service": (str,)}, {
        "id": _ID, "args": (dict, list), "fragment_size": (int,), "compression": (str,),
        "type": (str,), "timeout": _NUM}),
    "service_response": OpSpec({"service": (str,), "result": (bool,)}, {"id": _ID, "values": _ANY}),
    "advertise_service": OpSpec({"type": (str,), "service": (str,)}, {"id": _ID}),
    "unadvertise_service": OpSpec({"service": (str,)}, {"id": _ID}),
    "advertise_action": OpSpec({"type": (str,), "action": (str,)}, {"id": _ID}),
    "unadvertise_action": OpSpec({"action": (str,)}, {"id": _ID}),
    "send_action_goal": OpSpec({"action": (str,), "action_type": (str,)}, {
        "id": _ID, "args": (dict,), "feedback": (bool,), "fragment_size": (int,), "compression": (str,)}),
    "cancel_action_goal": OpSpec({"id": _ID, "action": (str,)}),
    "action_feedback": OpSpec({"id": _ID, "action": (str,), "values": _ANY}),
    "action_result": OpSpec({"id": _ID, "action": (str,), "result": (bool,)},
                            {"values": _ANY, "status": (int,)}),
    "fragment": OpSpec({"id": _ID, "data": (str,), "num": (int,), "total": (int,)}),
    "png": OpSpec({"data": (str,)}, {"id": _ID, "num": (int,), "total": (int,)}),
    "status": OpSpec({"level": (str,), "msg": (str,)}, {"id": _ID}),
    "set_level": OpSpec({"level": (str,)}, {"id": _ID}),
}

_LEVELS: Final = ("info", "warning", "error", "none")


def _type_ok(value: object, types: tuple[type, ...]) -> bool:
    if types is _ANY:
        return True
    if isinstance(value, bool) and bool not in types:
        return False  # JSON true is not a queue length
    if isinstance(value, float) and float in types:
        return math.isfinite(value)
    return isinstance(value, types)


def validate_op(obj: object) -> Op:
    """Check that ``obj`` is a well-formed op; return it (as a dict) or raise :class:`ProtocolError`.

    Unknown extra fields are kept (servers add their own), unknown op names are rejected.
    """
    if not isinstance(obj, dict):
        raise ProtocolError(f"a rosbridge frame must be a JSON/CBOR object, got {type(obj).__name__}")
    op = obj.get("op")
    if not isinstance(op, str):
        raise ProtocolError("frame has no string 'op' field; every rosbridge message needs one")
    spec = OPS.get(op)
    if spec is None:
        raise ProtocolError(f"unknown op {op[:40]!r}; known ops: {', '.join(sorted(OPS))}")
    for name, types in spec.required.items():
        if name not in obj:
            raise ProtocolError(f"op {op!r} is missing required field {name!r}")
        if not _type_ok(obj[name], types):
            raise ProtocolError(f"op {op!r} field {name!r} has type {type(obj[name]).__name__}, "
                                f"expected {'/'.join(t.__name__ for t in types)}")
    for name, types in spec.optional.items():
        if name in obj and obj[name] is not None and not _type_ok(obj[name], types):
            raise ProtocolError(f"op {op!r} field {name!r} has type {type(obj[name]).__name__}, "
                                f"expected {'/'.join(t.__name__ for t in types)}")
    if op == "subscribe" or op == "call_service" or op == "send_action_goal":
        comp = obj.get("compression")
        if comp is not None and comp not in COMPRESSIONS:
            raise ProtocolError(f"{op}: compression {comp!r} is not one of {', '.join(COMPRESSIONS)}")
        for name in ("throttle_rate", "queue_length", "fragment_size"):
            value = obj.get(name)
            if value is not None and value < 0:
                raise ProtocolError(f"{op}: {name} must be >= 0, got {value}")
    elif op == "fragment" and not 0 <= obj["num"] < obj["total"]:
        raise ProtocolError(f"fragment num {obj['num']} outside [0, total={obj['total']})")
    elif op == "set_level" and obj["level"] not in _LEVELS:
        raise ProtocolError(f"set_level: level {obj['level']!r} is not one of {', '.join(_LEVELS)}")
    return obj


# --------------------------------------------------------------------------------------------------
# Constructors (one per op). ``op_id=None`` leaves the optional id out, as rosbridge clients do.
# --------------------------------------------------------------------------------------------------
def _make(op: str, op_id: str | int | None = None, **fields: Any) -> Op:
    out: Op = {"op": op}
    if op_id is not None:
        out["id"] = op_id
    out.update({k: v for k, v in fields.items() if v is not None})
    return validate_op(out)


def advertise(topic: str, msg_type: str, *, op_id: str | None = None, latch: bool | None = None) -> Op:
    return _make("advertise", op_id, topic=topic, type=msg_type, latch=latch)


def unadvertise(topic: str, *, op_id: str | None = None) -> Op:
    return _make("unadvertise", op_id, topic=topic)


def publish(topic: str, msg: dict[str, Any], *, op_id: str | None = None) -> Op:
    return _make("publish", op_id, topic=topic, msg=msg)


def subscribe(
    topic: str,
    msg_type: str | None = None,
    *,
    op_id: str | None = None,
    throttle_rate: int = 0,
    queue_length: int = 0,
    fragment_size: int | None = None,
    compression: str = "none",
) -> Op:
    return _make("subscribe", op_id, topic=topic, type=msg_type, throttle_rate=throttle_rate,
                 queue_length=queue_length, fragment_size=fragment_size, compression=compression)


def unsubscribe(topic: str, *, op_id: str | None = None) -> Op:
    return _make("unsubscribe", op_id, topic=topic)


def call_service(service: str, args: dict[str, Any] | None = None, *, op_id: str | None = None,
                 fragment_size: int | None = None, compression: str | None = None) -> Op:
    return _make("call_service", op_id, service=service, args=args if args is not None else {},
                 fragment_size=fragment_size, compression=compression)


def service_response(service: str, values: Any, result: bool, *, op_id: str | int | None = None) -> Op:
    return _make("service_response", op_id, service=service, values=values, result=result)


def advertise_service(service: str, srv_type: str) -> Op:
    return _make("advertise_service", service=service, type=srv_type)


def unadvertise_service(service: str) -> Op:
    return _make("unadvertise_service", service=service)


def advertise_action(action: str, action_type: str) -> Op:
    return _make("advertise_action", action=action, type=action_type)


def unadvertise_action(action: str) -> Op:
    return _make("unadvertise_action", action=action)


def send_action_goal(action: str, action_type: str, args: dict[str, Any], *, op_id: str | int,
                     feedback: bool = True) -> Op:
    return _make("send_action_goal", op_id, action=action, action_type=action_type, args=args,
                 feedback=feedback)


def cancel_action_goal(action: str, *, op_id: str | int) -> Op:
    return _make("cancel_action_goal", op_id, action=action)


def action_feedback(action: str, values: Any, *, op_id: str | int) -> Op:
    return _make("action_feedback", op_id, action=action, values=values)


def action_result(action: str, values: Any, status: int, result: bool, *, op_id: str | int) -> Op:
    return _make("action_result", op_id, action=action, values=values, status=int(status), result=result)


def status(level: str, msg: str, *, op_id: str | None = None) -> Op:
    return _make("status", op_id, level=level, msg=msg)


def set_level(level: str, *, op_id: str | None = None) -> Op:
    return _make("set_level", op_id, level=level)


# --------------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------------
def _json_default(value: object) -> object:
    # uint8[] travels as base64 text in JSON mode (what rosbridge and roslibpy expect).
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, np.ndarray):
        if value.dtype == np.uint8:
            return base64.b64encode(value.tobytes()).decode("ascii")
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot encode {type(value).__name__} in a rosbridge message")


def encode_json(op: Mapping[str, Any]) -> str:
    """Compact JSON text of ``op``; bytes and uint8 arrays become base64, numpy values plain numbers."""
    try:
        return json.dumps(op, separators=(",", ":"), default=_json_default)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"op cannot be encoded as JSON: {exc}") from exc


# --------------------------------------------------------------------------------------------------
# CBOR with RFC 8746 typed arrays
# --------------------------------------------------------------------------------------------------
# tag -> numpy dtype (byte order explicit). Little-endian tags are what rosbridge sends; big-endian ones are
# decoded too because RFC 8746 allows them and it costs one table row each.
_TAG_DTYPES: Final[Mapping[int, np.dtype[Any]]] = {
    64: np.dtype("u1"), 68: np.dtype("u1"),
    65: np.dtype(">u2"), 66: np.dtype(">u4"), 67: np.dtype(">u8"),
    69: np.dtype("<u2"), 70: np.dtype("<u4"), 71: np.dtype("<u8"),
    72: np.dtype("i1"),
    73: np.dtype(">i2"), 74: np.dtype(">i4"), 75: np.dtype(">i8"),
    77: np.dtype("<i2"), 78: np.dtype("<i4"), 79: np.dtype("<i8"),
    81: np.dtype(">f4"), 82: np.dtype(">f8"),
    85: np.dtype("<f4"), 86: np.dtype("<f8"),
}
_DTYPE_TAGS: Final[Mapping[str, int]] = {
    "u2": 69, "u4": 70, "u8": 71, "i1": 72, "i2": 77, "i4": 78, "i8": 79, "f4": 85, "f8": 86,
}


def _array_tag(arr: np.ndarray[Any, Any]) -> object:
    kind = f"{arr.dtype.kind}{arr.dtype.itemsize}"
    if kind == "u1":
        return arr.tobytes()  # uint8[] is a plain byte string, as rosbridge sends it
    tag = _DTYPE_TAGS.get(kind)
    if tag is None:  # bool, complex, object...: no typed-array tag in the spec, send a plain array
        return [_to_cbor_tree(v) for v in arr.ravel().tolist()]
    return cbor2.CBORTag(tag, np.ascontiguousarray(arr.ravel(), dtype=arr.dtype.newbyteorder("<")).tobytes())


def _to_cbor_tree(value: object) -> object:
    if isinstance(value, dict):
        return {k: _to_cbor_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        # Without the ROS type we cannot tell int32[] from int64[], but a homogeneous float list is a
        # float64[] in every message this project uses: send it packed like rosbridge would.
        if value and all(type(v) is float for v in value):
            return cbor2.CBORTag(86, np.asarray(value, dtype="<f8").tobytes())
        return [_to_cbor_tree(v) for v in value]
    if isinstance(value, np.ndarray):
        return _array_tag(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


def encode_cbor(op: Mapping[str, Any]) -> bytes:
    """CBOR map of ``op`` the way rosbridge's ``compression: cbor`` sends it (server -> client)."""
    try:
        return cbor2.dumps(_to_cbor_tree(dict(op)))
    except (TypeError, ValueError, RecursionError, cbor2.CBOREncodeError) as exc:
        raise ProtocolError(f"op cannot be encoded as CBOR: {exc}") from exc


def _make_tag_hook(arrays: ArrayMode) -> Any:
    def hook(*args: object) -> object:
        # cbor2 5.x calls hook(decoder, tag), 6.x hook(tag, immutable): take the tag wherever it is.
        tag = next((a for a in args if isinstance(a, cbor2.CBORTag)), None)
        if tag is None:
            raise ProtocolError("unsupported cbor2 tag_hook signature")
        dtype = _TAG_DTYPES.get(tag.tag)
        if dtype is None:
            return tag
        if not isinstance(tag.value, bytes):
            raise ProtocolError(f"typed-array tag {tag.tag} wraps {type(tag.value).__name__}, not bytes")
        if len(tag.value) % dtype.itemsize:
            raise ProtocolError(f"typed-array tag {tag.tag}: {len(tag.value)} bytes is not a multiple of "
                                f"{dtype.itemsize}")
        arr = np.frombuffer(tag.value, dtype=dtype)
        if dtype.byteorder == ">":
            arr = arr.astype(dtype.newbyteorder("="))
        return arr.tolist() if arrays == "list" else arr

    return hook


_HOOKS: Final = {"numpy": _make_tag_hook("numpy"), "list": _make_tag_hook("list")}


def decode_frame(data: str | bytes | bytearray | memoryview, *, arrays: ArrayMode = "numpy") -> Op:
    """Parse one websocket frame (JSON text or CBOR binary) into a validated op.

    Typed-array tags become read-only numpy arrays (``arrays="numpy"``, zero-copy for little-endian) or
    Python lists. Raises :class:`ProtocolError` and nothing else, whatever ``data`` is.
    """
    obj: object
    if isinstance(data, str):
        try:
            obj = json.loads(data)
        except Exception as exc:  # JSONDecodeError, RecursionError on deep nesting, ...: all bad input
            raise ProtocolError(f"frame is not valid JSON: {str(exc)[:200]}") from exc
    elif isinstance(data, (bytes, bytearray, memoryview)):
        hook = _HOOKS.get(arrays)
        if hook is None:
            raise ProtocolError(f"arrays must be 'numpy' or 'list', got {arrays!r}")
        try:
            obj = cbor2.loads(bytes(data), tag_hook=hook)
        except ProtocolError:
            raise
        except Exception as exc:  # cbor2 raises a zoo (CBORDecodeError, ValueError, OverflowError, ...)
            raise ProtocolError(f"frame is not valid CBOR: {str(exc)[:200]}") from exc
    else:
        raise ProtocolError(f"a frame is str (JSON) or bytes (CBOR), got {type(data).__name__}")
    return validate_op(obj)


# --------------------------------------------------------------------------------------------------
# Fragments
# --------------------------------------------------------------------------------------------------
def fragment_text(text: str, fragment_size: int, op_id: str | int) -> list[Op]:
    """Split an encoded JSON frame into ``fragment`` ops of at most ``fragment_size`` characters of data."""
    if fragment_size <= 0:
        raise ProtocolError(f"fragment_size must be > 0, got {fragment_size}")
    chunks = [text[i:i + fragment_size] for i in range(0, len(text), fragment_size)] or [""]
    return [{"op": "fragment", "id": op_id, "data": chunk, "num": i, "total": len(chunks)}
            for i, chunk in enumerate(chunks)]


@dataclass
class _Pending:
    total: int
    parts: dict[int, str] = field(default_factory=dict)
    size: int = 0


class FragmentAssembler:
    """Reassembles ``fragment`` ops into the op they carry, in bounded memory.

    At most ``max_messages`` messages are pending and ``max_bytes`` characters held over all of them; when
    a new fragment would exceed either bound the oldest pending message is dropped (a peer that never
    finishes a message must not grow us). A single message larger than ``max_bytes`` is rejected.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024, max_messages: int = 32,
                 max_fragments: int = 1_000_000) -> None:
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self.max_fragments = max_fragments
        self._pending: OrderedDict[str | int, _Pending] = OrderedDict()
        self._bytes = 0
        self.dropped = 0  # incomplete messages evicted so far

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    @property
    def pending_messages(self) -> int:
        return len(self._pending)

    def _drop(self, key: str | int) -> None:
        entry = self._pending.pop(key)
        self._bytes -= entry.size

    def add(self, frag: Mapping[str, Any], *, arrays: ArrayMode = "numpy") -> Op | None:
        """Feed one fragment op; return the reassembled, validated op when it is complete, else None."""
        frag = validate_op(dict(frag))
        if frag["op"] != "fragment":
            raise ProtocolError(f"FragmentAssembler.add expects a 'fragment' op, got {frag['op']!r}")
        key, num, total, data = frag["id"], frag["num"], frag["total"], frag["data"]
        if total > self.max_fragments:
            raise ProtocolError(f"fragment total {total} exceeds the limit of {self.max_fragments}")
        entry = self._pending.get(key)
        if entry is not None and entry.total != total:
            self._drop(key)  # a new message reusing the id: the old one can never complete
            entry = None
        if entry is None:
            while len(self._pending) >= self.max_messages:
                self._drop(next(iter(self._pending)))
                self.dropped += 1
            entry = self._pending[key] = _Pending(total)
        old = entry.parts.get(num)
        delta = len(data) - (len(old) if old is not None else 0)
        if entry.size + delta > self.max_bytes:
            self._drop(key)
            raise ProtocolError(f"fragmented message {key!r} exceeds {self.max_bytes} characters")
        while self._bytes + delta > self.max_bytes:
            oldest = next(iter(self._pending))
            if oldest == key:
                break
            self._drop(oldest)
            self.dropped += 1
        entry.parts[num] = data
        entry.size += delta
        self._bytes += delta
        if len(entry.parts) < total:
            return None
        self._drop(key)
        text = "".join(entry.parts[i] for i in range(total))
        return decode_frame(text, arrays=arrays)


# --------------------------------------------------------------------------------------------------
# PNG "compression" (rosbridge's: the JSON text packed into an RGB image, padded with newlines)
# --------------------------------------------------------------------------------------------------
def png_encode(text: str) -> str:
    """Base64 PNG carrying ``text``, as rosbridge's ``compression: png`` produces it."""
    from PIL import Image  # deferred: only png subscribers pay for Pillow

    raw = text.encode("utf-8")
    pixels = max(1, math.ceil(len(raw) / 3))
    width = max(1, math.isqrt(pixels))
    height = math.ceil(pixels / width)
    raw += b"\n" * (width * height * 3 - len(raw))
    buf = io.BytesIO()
    Image.frombytes("RGB", (width, height), raw).save(buf, "png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def png_decode(data: str) -> str:
    """Inverse of :func:`png_encode`; raises :class:`ProtocolError` on anything that is not such a PNG."""
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(base64.b64decode(data, validate=True)), formats=("PNG",))
        if img.width * img.height > 64 * 1024 * 1024:
            raise ProtocolError("png frame is too large")
        return img.convert("RGB").tobytes().decode("utf-8").rstrip("\n")
    except ProtocolError:
        raise
    except Exception as exc:  # binascii.Error, and PIL raises many types on corrupt images
        raise ProtocolError(f"png frame cannot be decoded: {str(exc)[:200]}") from exc
