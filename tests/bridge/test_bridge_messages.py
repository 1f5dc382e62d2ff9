"""messages.py: every codec round-trips (dict, JSON wire, CBOR wire); bad dicts raise MessageError naming the field."""

from __future__ import annotations

import base64
import json
from typing import Any

import cbor2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crane_x7_vla.bridge import messages as M
from crane_x7_vla.bridge import protocol as P
from crane_x7_vla.bridge.protocol import GoalStatus, ProtocolError

FAST = settings(max_examples=40, deadline=None)
finite = st.floats(allow_nan=False, allow_infinity=False)
f32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
text = st.text(max_size=12)
floats = st.lists(finite, max_size=8).map(tuple)
times = st.builds(M.Time, st.integers(0, 2**31), st.integers(0, 999_999_999))
durations = st.builds(M.Duration, st.integers(-(2**31), 2**31), st.integers(0, 999_999_999))
headers = st.builds(M.Header, times, text)
points = st.builds(M.JointTrajectoryPoint, floats, floats, floats, floats, durations)
trajectories = st.builds(M.JointTrajectory, st.lists(text, max_size=8).map(tuple),
                         st.lists(points, max_size=3).map(tuple), headers)
tolerances = st.lists(st.builds(M.JointTolerance, text, finite, finite, finite), max_size=3).map(tuple)

CODECS: dict[type, Any] = {
    M.String: st.builds(M.String, st.text()),
    M.Float32MultiArray: st.builds(
        M.Float32MultiArray, st.lists(f32, max_size=16).map(tuple),
        st.lists(st.builds(M.MultiArrayDimension, text, st.integers(0, 99), st.integers(0, 99)), max_size=2).map(tuple),
        st.integers(0, 9)),
    M.CompressedImage: st.builds(M.CompressedImage, st.binary(max_size=256), st.sampled_from(["jpeg", "png"]), headers),
    M.JointState: st.builds(M.JointState, st.lists(text, max_size=8).map(tuple), floats, floats, floats, headers),
    M.JointTrajectory: trajectories,
    M.FollowJointTrajectoryGoal: st.builds(M.FollowJointTrajectoryGoal, trajectories, tolerances, tolerances, durations),
    M.FollowJointTrajectoryFeedback: st.builds(M.FollowJointTrajectoryFeedback, st.lists(text, max_size=7).map(tuple),
                                               points, points, points, headers),
    M.FollowJointTrajectoryResult: st.builds(M.FollowJointTrajectoryResult, st.integers(-5, 0), text),
    M.GripperCommandGoal: st.builds(M.GripperCommandGoal, finite, finite),
    M.GripperCommandFeedback: st.builds(M.GripperCommandFeedback, finite, finite, st.booleans(), st.booleans()),
    M.GripperCommandResult: st.builds(M.GripperCommandResult, finite, finite, st.booleans(), st.booleans()),
}


def filled(msg: Any) -> Any:
    """Float32MultiArray sends a default 1-D layout when none was given; that is what comes back."""
    if isinstance(msg, M.Float32MultiArray) and not msg.dims:
        n = len(msg.data)
        return M.Float32MultiArray(msg.data, (M.MultiArrayDimension("", n, n),), msg.data_offset)
    return msg


@pytest.mark.parametrize("cls", list(CODECS), ids=lambda c: c.__name__)
def test_codec_round_trips_through_dict_json_and_cbor(cls: type) -> None:
    @FAST
    @given(msg=CODECS[cls])
    def check(msg: Any) -> None:
        expected = filled(msg)
        assert cls.from_dict(msg.to_dict()) == expected
        op = P.publish("/t", msg.to_dict())
        assert cls.from_dict(P.decode_frame(P.encode_json(op))["msg"]) == expected
        assert cls.from_dict(P.decode_frame(P.encode_cbor(op))["msg"]) == expected  # numpy arrays, bytes
        assert cls.from_dict(P.decode_frame(P.encode_cbor(op), arrays="list")["msg"]) == expected

    check()


def test_compressed_image_data_accepts_bytes_base64_and_int_lists() -> None:
    jpeg = b"\xff\xd8\xff\xe0 fake"
    for data in (jpeg, base64.b64encode(jpeg).decode(), list(jpeg), np.frombuffer(jpeg, np.uint8)):
        assert M.CompressedImage.from_dict({"format": "jpeg", "data": data}).data == jpeg
    assert json.loads(P.encode_json(P.publish("/c", M.CompressedImage(jpeg).to_dict())))["msg"]["data"] == \
        base64.b64encode(jpeg).decode()
    assert cbor2.loads(P.encode_cbor(P.publish("/c", M.CompressedImage(jpeg).to_dict())))["msg"]["data"] == jpeg


def test_header_accepts_ros1_and_emits_ros2() -> None:
    h = M.Header.from_dict({"seq": 7, "stamp": {"secs": 3, "nsecs": 5}, "frame_id": "cam"})
    assert (h.stamp, h.frame_id, h.seq) == (M.Time(3, 5), "cam", 7)
    assert h.to_dict() == {"stamp": {"sec": 3, "nanosec": 5}, "frame_id": "cam"}
    assert M.Duration.from_dict({"secs": 1, "nsecs": 2}) == M.Duration(1, 2)
    assert M.Time.from_seconds(1.25) == M.Time(1, 250_000_000) and M.Time(1, 5 * 10**8).to_seconds() == 1.5


def test_float32_multiarray_fills_layout() -> None:
    d = M.Float32MultiArray((1.0, 2.0, 3.0)).to_dict()
    assert d["layout"] == {"dim": [{"label": "", "size": 3, "stride": 3}], "data_offset": 0}


def test_type_names() -> None:
    assert M.normalize_type("std_msgs/msg/String") == "std_msgs/String"
    assert M.normalize_type("control_msgs/action/GripperCommand") == "control_msgs/GripperCommand"
    assert M.types_match("sensor_msgs/msg/JointState", "sensor_msgs/JointState")
    assert not M.types_match("std_msgs/String", "bad")
    with pytest.raises(M.MessageError, match="expected 'pkg/Type'"):
        M.normalize_type("String")
    assert M.decode_message("std_msgs/msg/String", {"data": "hi"}) == M.String("hi")


def test_action_result_status() -> None:
    ok = M.ActionResult.from_op(P.action_result("/a", {"x": 1}, GoalStatus.SUCCEEDED, True, op_id="1"))
    assert ok.succeeded and not ok.canceled and ok.values == {"x": 1}
    canceled = M.ActionResult.from_op(P.action_result("/a", {}, GoalStatus.CANCELED, True, op_id="1"))
    assert canceled.canceled and not canceled.succeeded
    failed = M.ActionResult.from_op({"op": "action_result", "id": "1", "action": "/a", "values": "boom",
                                     "result": False})
    assert failed.status == GoalStatus.ABORTED and not failed.succeeded


@pytest.mark.parametrize(
    ("cls", "bad", "needle"),
    [
        (M.JointState, {"name": ["a"], "position": [0.1, "x"]}, r"JointState\.position\[1\]: expected a number"),
        (M.JointState, {"header": {"stamp": {"sec": 1, "nanosec": -1}}}, r"JointState\.header\.stamp"),
        (M.String, {}, r"String\.data: required field is missing"),
        (M.CompressedImage, {"data": "!!notbase64"}, r"CompressedImage\.data: string data is not valid base64"),
        (M.CompressedImage, {"data": [1, 300]}, r"CompressedImage\.data\[1\]: byte value 300"),
        (M.JointTrajectory, {"points": [{"positions": [1.0], "time_from_start": {"sec": "1"}}]},
         r"JointTrajectory\.points\[0\]\.time_from_start\.sec: expected an integer"),
        (M.GripperCommandGoal, {"command": {}}, r"GripperCommandGoal\.command\.position: required"),
        (M.GripperCommandFeedback, {"stalled": 1}, r"stalled: expected true/false"),
        (M.Float32MultiArray, {"data": [True]}, r"data\[0\]: expected a number, got bool"),
        (M.FollowJointTrajectoryGoal, [], r"FollowJointTrajectoryGoal: expected an object"),
    ],
)
def test_malformed_messages_name_the_field(cls: Any, bad: Any, needle: str) -> None:
    with pytest.raises(M.MessageError, match=needle):
        cls.from_dict(bad)


any_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(
        ["data", "header", "stamp", "sec", "nanosec", "secs", "name", "position", "points", "positions",
         "time_from_start", "layout", "dim", "command", "trajectory", "format", "joint_names", "size"]), c, max_size=4),
    max_leaves=10)


@settings(max_examples=150, deadline=None)
@given(value=any_values, cls=st.sampled_from(list(CODECS)))
def test_fuzz_codecs_only_raise_message_error(value: Any, cls: Any) -> None:
    try:
        cls.from_dict(value)
    except ProtocolError as exc:
        assert isinstance(exc, M.MessageError)
