"""ROS message codecs: frozen dataclasses <-> rosbridge message dicts. Pure, no I/O.

Design: one small dataclass per ROS type this project exchanges, each with ``to_dict()`` (what we send: ROS 2
shapes, ``pkg/Type`` names) and a tolerant ``from_dict()`` (what we may receive: ROS 1 or ROS 2 stamps,
JSON lists or CBOR numpy arrays, base64 text or byte strings). Received dicts are untrusted, so every
accessor checks types and a failure raises :class:`MessageError` (a :class:`ProtocolError`) naming the
field path, e.g. ``JointState.position[3]: expected a number, got 'x'``.

Numeric arrays are stored as tuples of Python floats: the messages here are short (joints, actions) and
tuples keep the dataclasses hashable and comparable; ``np.asarray(msg.position)`` when you need math.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import numpy as np

from crane_x7_vla.bridge.protocol import GoalStatus, ProtocolError

__all__ = [
    "MESSAGE_TYPES",
    "ActionResult",
    "CompressedImage",
    "Duration",
    "Float32MultiArray",
    "FollowJointTrajectoryFeedback",
    "FollowJointTrajectoryGoal",
    "FollowJointTrajectoryResult",
    "GripperCommandFeedback",
    "GripperCommandGoal",
    "GripperCommandResult",
    "Header",
    "JointState",
    "JointTolerance",
    "JointTrajectory",
    "JointTrajectoryPoint",
    "MessageError",
    "MultiArrayDimension",
    "String",
    "Time",
    "decode_message",
    "normalize_type",
    "types_match",
]

Msg = dict[str, Any]


class MessageError(ProtocolError):
    """A message dict does not have the shape of its ROS type (the message names the field)."""


# --------------------------------------------------------------------------------------------------
# Type strings
# --------------------------------------------------------------------------------------------------
def normalize_type(type_string: str) -> str:
    """``pkg/msg/Type`` / ``pkg/action/Type`` / ``pkg/Type`` -> ``pkg/Type`` (what ROS 1 and 2 both accept)."""
    if not isinstance(type_string, str):
        raise MessageError(f"a ROS type name is a string like 'std_msgs/String', got {type(type_string).__name__}")
    parts = type_string.strip("/").split("/")
    if len(parts) == 3 and parts[1] in ("msg", "srv", "action"):
        parts = [parts[0], parts[2]]
    if len(parts) != 2 or not all(parts):
        raise MessageError(f"bad ROS type name {type_string!r}: expected 'pkg/Type' or 'pkg/msg/Type'")
    return f"{parts[0]}/{parts[1]}"


def types_match(a: str, b: str) -> bool:
    """Whether two type names denote the same ROS type (``std_msgs/String`` == ``std_msgs/msg/String``)."""
    try:
        return normalize_type(a) == normalize_type(b)
    except MessageError:
        return False


# --------------------------------------------------------------------------------------------------
# Checked accessors (each raises MessageError naming the path)
# --------------------------------------------------------------------------------------------------
def _mapping(d: object, path: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise MessageError(f"{path}: expected an object/dict, got {type(d).__name__}")
    return d


def _get(d: Mapping[str, Any], name: str, path: str, default: Any = ...) -> Any:
    if name in d:
        return d[name]
    if default is ...:
        raise MessageError(f"{path}.{name}: required field is missing")
    return default


def _float(v: object, path: str) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise MessageError(f"{path}: expected a number, got {type(v).__name__}")
    try:
        return float(v)
    except OverflowError as exc:  # a huge int from JSON
        raise MessageError(f"{path}: number {v} does not fit a float") from exc


def _int(v: object, path: str) -> int:
    if isinstance(v, (bool, np.bool_)):
        raise MessageError(f"{path}: expected an integer, got bool")
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    raise MessageError(f"{path}: expected an integer, got {type(v).__name__}")


def _str(v: object, path: str) -> str:
    if not isinstance(v, str):
        raise MessageError(f"{path}: expected a string, got {type(v).__name__}")
    return v


def _bool(v: object, path: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise MessageError(f"{path}: expected true/false, got {type(v).__name__}")
    return bool(v)


def _floats(v: object, path: str) -> tuple[float, ...]:
    if isinstance(v, np.ndarray):
        if v.dtype.kind not in "iuf":
            raise MessageError(f"{path}: expected a numeric array, got dtype {v.dtype}")
        return tuple(float(x) for x in v.ravel().tolist())
    if not isinstance(v, (list, tuple)):
        raise MessageError(f"{path}: expected a list of numbers, got {type(v).__name__}")
    return tuple(_float(x, f"{path}[{i}]") for i, x in enumerate(v))


def _strs(v: object, path: str) -> tuple[str, ...]:
    if not isinstance(v, (list, tuple)):
        raise MessageError(f"{path}: expected a list of strings, got {type(v).__name__}")
    return tuple(_str(x, f"{path}[{i}]") for i, x in enumerate(v))


def _bytes(v: object, path: str) -> bytes:
    """uint8[]: CBOR byte string, JSON base64 text, a list of ints, or a uint8 numpy array."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, str):
        try:
            return base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MessageError(f"{path}: string data is not valid base64 ({exc})") from exc
    if isinstance(v, np.ndarray):
        if v.dtype != np.uint8:
            raise MessageError(f"{path}: expected uint8 data, got dtype {v.dtype}")
        return v.tobytes()
    if isinstance(v, (list, tuple)):
        out = bytearray()
        for i, x in enumerate(v):
            b = _int(x, f"{path}[{i}]")
            if not 0 <= b <= 255:
                raise MessageError(f"{path}[{i}]: byte value {b} outside 0..255")
            out.append(b)
        return bytes(out)
    raise MessageError(f"{path}: expected bytes, base64 text or a list of ints, got {type(v).__name__}")


def _list(v: object, path: str) -> list[Any] | tuple[Any, ...]:
    if not isinstance(v, (list, tuple)):
        raise MessageError(f"{path}: expected a list, got {type(v).__name__}")
    return v


# --------------------------------------------------------------------------------------------------
# builtin_interfaces / std_msgs
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Time:
    """``builtin_interfaces/Time``; reads ROS 2 ``{sec, nanosec}`` and ROS 1 ``{secs, nsecs}``."""

    sec: int = 0
    nanosec: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.nanosec < 1_000_000_000:
            raise MessageError(f"{type(self).__name__}.nanosec: {self.nanosec} outside [0, 1e9)")

    @classmethod
    def from_seconds(cls, seconds: float) -> Time:
        ns = round(seconds * 1e9)
        return cls(ns // 1_000_000_000, ns % 1_000_000_000)

    def to_seconds(self) -> float:
        return self.sec + self.nanosec * 1e-9

    def to_dict(self) -> Msg:
        return {"sec": self.sec, "nanosec": self.nanosec}

    @classmethod
    def _parse(cls, d: object, path: str) -> tuple[int, int]:
        m = _mapping(d, path)
        if "sec" in m or "nanosec" in m:
            sec, ns = _int(m.get("sec", 0), f"{path}.sec"), _int(m.get("nanosec", 0), f"{path}.nanosec")
        else:
            sec, ns = _int(m.get("secs", 0), f"{path}.secs"), _int(m.get("nsecs", 0), f"{path}.nsecs")
        if not 0 <= ns < 1_000_000_000:
            raise MessageError(f"{path}: nanoseconds {ns} outside [0, 1e9)")
        return sec, ns

    @classmethod
    def from_dict(cls, d: object, path: str = "Time") -> Time:
        return cls(*cls._parse(d, path))


@dataclass(frozen=True)
class Duration(Time):
    """``builtin_interfaces/Duration`` (same wire shape as Time)."""

    @classmethod
    def from_dict(cls, d: object, path: str = "Duration") -> Duration:
        return cls(*cls._parse(d, path))


@dataclass(frozen=True)
class Header:
    """``std_msgs/Header``. ROS 1's ``seq`` is read (kept for logging) but never sent."""

    stamp: Time = Time()
    frame_id: str = ""
    seq: int | None = field(default=None, compare=False)

    def to_dict(self) -> Msg:
        return {"stamp": self.stamp.to_dict(), "frame_id": self.frame_id}

    @classmethod
    def from_dict(cls, d: object, path: str = "Header") -> Header:
        m = _mapping(d, path)
        seq = m.get("seq")
        return cls(
            stamp=Time.from_dict(m.get("stamp", {}), f"{path}.stamp"),
            frame_id=_str(m.get("frame_id", ""), f"{path}.frame_id"),
            seq=None if seq is None else _int(seq, f"{path}.seq"),
        )


def _header(m: Mapping[str, Any], path: str) -> Header:
    return Header.from_dict(m["header"], f"{path}.header") if "header" in m else Header()


@dataclass(frozen=True)
class String:
    TYPE: ClassVar[str] = "std_msgs/String"
    data: str = ""

    def to_dict(self) -> Msg:
        return {"data": self.data}

    @classmethod
    def from_dict(cls, d: object, path: str = "String") -> String:
        return cls(_str(_get(_mapping(d, path), "data", path), f"{path}.data"))


@dataclass(frozen=True)
class MultiArrayDimension:
    label: str = ""
    size: int = 0
    stride: int = 0

    def to_dict(self) -> Msg:
        return {"label": self.label, "size": self.size, "stride": self.stride}

    @classmethod
    def from_dict(cls, d: object, path: str = "MultiArrayDimension") -> MultiArrayDimension:
        m = _mapping(d, path)
        return cls(_str(m.get("label", ""), f"{path}.label"), _int(m.get("size", 0), f"{path}.size"),
                   _int(m.get("stride", 0), f"{path}.stride"))


@dataclass(frozen=True)
class Float32MultiArray:
    """``std_msgs/Float32MultiArray``. Empty ``dims`` are sent as one dimension covering ``data``."""

    TYPE: ClassVar[str] = "std_msgs/Float32MultiArray"
    data: tuple[float, ...] = ()
    dims: tuple[MultiArrayDimension, ...] = ()
    data_offset: int = 0

    def to_dict(self) -> Msg:
        n = len(self.data)
        dims = self.dims or (MultiArrayDimension("", n, n),)
        return {"layout": {"dim": [d.to_dict() for d in dims], "data_offset": self.data_offset},
                "data": list(self.data)}

    @classmethod
    def from_dict(cls, d: object, path: str = "Float32MultiArray") -> Float32MultiArray:
        m = _mapping(d, path)
        layout = _mapping(m.get("layout", {}), f"{path}.layout")
        dims = tuple(MultiArrayDimension.from_dict(x, f"{path}.layout.dim[{i}]")
                     for i, x in enumerate(_list(layout.get("dim", []), f"{path}.layout.dim")))
        return cls(_floats(_get(m, "data", path), f"{path}.data"), dims,
                   _int(layout.get("data_offset", 0), f"{path}.layout.data_offset"))


# --------------------------------------------------------------------------------------------------
# sensor_msgs
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompressedImage:
    """``sensor_msgs/CompressedImage``. ``data`` is raw JPEG/PNG bytes (base64 only on the JSON wire)."""

    TYPE: ClassVar[str] = "sensor_msgs/CompressedImage"
    data: bytes = b""
    format: str = "jpeg"
    header: Header = Header()

    def to_dict(self) -> Msg:
        # bytes stay bytes: protocol.encode_json base64s them, encode_cbor sends a byte string.
        return {"header": self.header.to_dict(), "format": self.format, "data": self.data}

    @classmethod
    def from_dict(cls, d: object, path: str = "CompressedImage") -> CompressedImage:
        m = _mapping(d, path)
        return cls(_bytes(_get(m, "data", path), f"{path}.data"),
                   _str(m.get("format", ""), f"{path}.format"), _header(m, path))


@dataclass(frozen=True)
class JointState:
    TYPE: ClassVar[str] = "sensor_msgs/JointState"
    name: tuple[str, ...] = ()
    position: tuple[float, ...] = ()
    velocity: tuple[float, ...] = ()
    effort: tuple[float, ...] = ()
    header: Header = Header()

    def to_dict(self) -> Msg:
        return {"header": self.header.to_dict(), "name": list(self.name), "position": list(self.position),
                "velocity": list(self.velocity), "effort": list(self.effort)}

    @classmethod
    def from_dict(cls, d: object, path: str = "JointState") -> JointState:
        m = _mapping(d, path)
        return cls(_strs(m.get("name", []), f"{path}.name"), _floats(m.get("position", []), f"{path}.position"),
                   _floats(m.get("velocity", []), f"{path}.velocity"),
                   _floats(m.get("effort", []), f"{path}.effort"), _header(m, path))

    def positions_by_name(self) -> dict[str, float]:
        if len(self.position) != len(self.name):
            raise MessageError(f"JointState.position has {len(self.position)} values for {len(self.name)} names")
        return dict(zip(self.name, self.position, strict=True))


# --------------------------------------------------------------------------------------------------
# trajectory_msgs
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JointTrajectoryPoint:
    positions: tuple[float, ...] = ()
    velocities: tuple[float, ...] = ()
    accelerations: tuple[float, ...] = ()
    effort: tuple[float, ...] = ()
    time_from_start: Duration = Duration()

    def to_dict(self) -> Msg:
        return {"positions": list(self.positions), "velocities": list(self.velocities),
                "accelerations": list(self.accelerations), "effort": list(self.effort),
                "time_from_start": self.time_from_start.to_dict()}

    @classmethod
    def from_dict(cls, d: object, path: str = "JointTrajectoryPoint") -> JointTrajectoryPoint:
        m = _mapping(d, path)
        return cls(
            _floats(m.get("positions", []), f"{path}.positions"),
            _floats(m.get("velocities", []), f"{path}.velocities"),
            _floats(m.get("accelerations", []), f"{path}.accelerations"),
            _floats(m.get("effort", []), f"{path}.effort"),
            Duration.from_dict(m.get("time_from_start", {}), f"{path}.time_from_start"),
        )


@dataclass(frozen=True)
class JointTrajectory:
    TYPE: ClassVar[str] = "trajectory_msgs/JointTrajectory"
    joint_names: tuple[str, ...] = ()
    points: tuple[JointTrajectoryPoint, ...] = ()
    header: Header = Header()

    def to_dict(self) -> Msg:
        return {"header": self.header.to_dict(), "joint_names": list(self.joint_names),
                "points": [p.to_dict() for p in self.points]}

    @classmethod
    def from_dict(cls, d: object, path: str = "JointTrajectory") -> JointTrajectory:
        m = _mapping(d, path)
        points = _list(m.get("points", []), f"{path}.points")
        return cls(_strs(m.get("joint_names", []), f"{path}.joint_names"),
                   tuple(JointTrajectoryPoint.from_dict(p, f"{path}.points[{i}]") for i, p in enumerate(points)),
                   _header(m, path))


# --------------------------------------------------------------------------------------------------
# control_msgs actions (ROS 2): goal / feedback / result
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JointTolerance:
    name: str = ""
    position: float = 0.0
    velocity: float = 0.0
    acceleration: float = 0.0

    def to_dict(self) -> Msg:
        return {"name": self.name, "position": self.position, "velocity": self.velocity,
                "acceleration": self.acceleration}

    @classmethod
    def from_dict(cls, d: object, path: str = "JointTolerance") -> JointTolerance:
        m = _mapping(d, path)
        return cls(_str(m.get("name", ""), f"{path}.name"), _float(m.get("position", 0.0), f"{path}.position"),
                   _float(m.get("velocity", 0.0), f"{path}.velocity"),
                   _float(m.get("acceleration", 0.0), f"{path}.acceleration"))


def _tolerances(v: object, path: str) -> tuple[JointTolerance, ...]:
    return tuple(JointTolerance.from_dict(x, f"{path}[{i}]") for i, x in enumerate(_list(v, path)))


@dataclass(frozen=True)
class FollowJointTrajectoryGoal:
    """``control_msgs/action/FollowJointTrajectory`` goal (fields left out get the server's defaults)."""

    ACTION_TYPE: ClassVar[str] = "control_msgs/FollowJointTrajectory"
    trajectory: JointTrajectory = JointTrajectory()
    path_tolerance: tuple[JointTolerance, ...] = ()
    goal_tolerance: tuple[JointTolerance, ...] = ()
    goal_time_tolerance: Duration = Duration()

    def to_dict(self) -> Msg:
        return {"trajectory": self.trajectory.to_dict(),
                "path_tolerance": [t.to_dict() for t in self.path_tolerance],
                "goal_tolerance": [t.to_dict() for t in self.goal_tolerance],
                "goal_time_tolerance": self.goal_time_tolerance.to_dict()}

    @classmethod
    def from_dict(cls, d: object, path: str = "FollowJointTrajectoryGoal") -> FollowJointTrajectoryGoal:
        m = _mapping(d, path)
        return cls(JointTrajectory.from_dict(_get(m, "trajectory", path), f"{path}.trajectory"),
                   _tolerances(m.get("path_tolerance", []), f"{path}.path_tolerance"),
                   _tolerances(m.get("goal_tolerance", []), f"{path}.goal_tolerance"),
                   Duration.from_dict(m.get("goal_time_tolerance", {}), f"{path}.goal_time_tolerance"))


@dataclass(frozen=True)
class FollowJointTrajectoryFeedback:
    joint_names: tuple[str, ...] = ()
    desired: JointTrajectoryPoint = JointTrajectoryPoint()
    actual: JointTrajectoryPoint = JointTrajectoryPoint()
    error: JointTrajectoryPoint = JointTrajectoryPoint()
    header: Header = Header()

    def to_dict(self) -> Msg:
        return {"header": self.header.to_dict(), "joint_names": list(self.joint_names),
                "desired": self.desired.to_dict(), "actual": self.actual.to_dict(), "error": self.error.to_dict()}

    @classmethod
    def from_dict(cls, d: object, path: str = "FollowJointTrajectoryFeedback") -> FollowJointTrajectoryFeedback:
        m = _mapping(d, path)
        desired, actual, error = (JointTrajectoryPoint.from_dict(m.get(k, {}), f"{path}.{k}")
                                  for k in ("desired", "actual", "error"))
        return cls(_strs(m.get("joint_names", []), f"{path}.joint_names"), desired, actual, error,
                   _header(m, path))


@dataclass(frozen=True)
class FollowJointTrajectoryResult:
    SUCCESSFUL: ClassVar[int] = 0
    INVALID_GOAL: ClassVar[int] = -1
    INVALID_JOINTS: ClassVar[int] = -2
    OLD_HEADER_TIMESTAMP: ClassVar[int] = -3
    PATH_TOLERANCE_VIOLATED: ClassVar[int] = -4
    GOAL_TOLERANCE_VIOLATED: ClassVar[int] = -5
    error_code: int = 0
    error_string: str = ""

    def to_dict(self) -> Msg:
        return {"error_code": self.error_code, "error_string": self.error_string}

    @classmethod
    def from_dict(cls, d: object, path: str = "FollowJointTrajectoryResult") -> FollowJointTrajectoryResult:
        m = _mapping(d, path)
        return cls(_int(m.get("error_code", 0), f"{path}.error_code"),
                   _str(m.get("error_string", ""), f"{path}.error_string"))


@dataclass(frozen=True)
class GripperCommandGoal:
    """``control_msgs/action/GripperCommand`` goal: ``{command: {position, max_effort}}``."""

    ACTION_TYPE: ClassVar[str] = "control_msgs/GripperCommand"
    position: float = 0.0
    max_effort: float = 0.0

    def to_dict(self) -> Msg:
        return {"command": {"position": self.position, "max_effort": self.max_effort}}

    @classmethod
    def from_dict(cls, d: object, path: str = "GripperCommandGoal") -> GripperCommandGoal:
        cmd = _mapping(_get(_mapping(d, path), "command", path), f"{path}.command")
        return cls(_float(_get(cmd, "position", f"{path}.command"), f"{path}.command.position"),
                   _float(cmd.get("max_effort", 0.0), f"{path}.command.max_effort"))


@dataclass(frozen=True)
class GripperCommandFeedback:
    """Feedback and result of GripperCommand share this shape."""

    position: float = 0.0
    effort: float = 0.0
    stalled: bool = False
    reached_goal: bool = False

    def to_dict(self) -> Msg:
        return {"position": self.position, "effort": self.effort, "stalled": self.stalled,
                "reached_goal": self.reached_goal}

    @classmethod
    def _fields(cls, d: object, path: str) -> tuple[float, float, bool, bool]:
        m = _mapping(d, path)
        return (_float(m.get("position", 0.0), f"{path}.position"), _float(m.get("effort", 0.0), f"{path}.effort"),
                _bool(m.get("stalled", False), f"{path}.stalled"),
                _bool(m.get("reached_goal", False), f"{path}.reached_goal"))

    @classmethod
    def from_dict(cls, d: object, path: str = "GripperCommandFeedback") -> GripperCommandFeedback:
        return cls(*cls._fields(d, path))


@dataclass(frozen=True)
class GripperCommandResult(GripperCommandFeedback):
    @classmethod
    def from_dict(cls, d: object, path: str = "GripperCommandResult") -> GripperCommandResult:
        return cls(*cls._fields(d, path))


@dataclass(frozen=True)
class ActionResult:
    """The outcome of a goal as carried by an ``action_result`` op (status per ROS 2 GoalStatus).

    ``result`` is rosbridge's flag that the goal ran to an end (it is true for canceled goals too);
    on failure ``values`` is the error text. ``succeeded``/``canceled`` read the status.
    """

    status: int
    values: Any
    result: bool = True

    @property
    def succeeded(self) -> bool:
        return self.result and self.status == GoalStatus.SUCCEEDED

    @property
    def canceled(self) -> bool:
        return self.status == GoalStatus.CANCELED

    @classmethod
    def from_op(cls, op: Mapping[str, Any]) -> ActionResult:
        if op.get("op") != "action_result":
            raise MessageError(f"ActionResult.from_op: expected an 'action_result' op, got {op.get('op')!r}")
        result = _bool(_get(op, "result", "action_result"), "action_result.result")
        default = GoalStatus.SUCCEEDED if result else GoalStatus.ABORTED
        status = _int(op.get("status", default), "action_result.status")
        return cls(status, op.get("values"), result)


# --------------------------------------------------------------------------------------------------
# Registry by type name
# --------------------------------------------------------------------------------------------------
MESSAGE_TYPES: Final[Mapping[str, Any]] = {
    cls.TYPE: cls for cls in (String, Float32MultiArray, CompressedImage, JointState, JointTrajectory)
}


def decode_message(msg_type: str, msg: object) -> Any:
    """Decode ``msg`` with the codec registered for ``msg_type`` (either type-name spelling)."""
    cls = MESSAGE_TYPES.get(normalize_type(msg_type))
    if cls is None:
        raise MessageError(f"no codec for {msg_type!r}; known: {', '.join(sorted(MESSAGE_TYPES))}")
    return cls.from_dict(msg)


def is_finite(values: tuple[float, ...]) -> bool:
    """True when no value is NaN/inf (actions and joint targets must be finite to be sent to a robot)."""
    return all(math.isfinite(v) for v in values)
