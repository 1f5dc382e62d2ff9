"""protocol.py: op constructors, JSON/CBOR round trips (typed arrays of every dtype), fragments, fuzzing."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import cbor2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from crane_x7_vla.bridge import protocol as P
from crane_x7_vla.bridge._support import backoff_delay
from crane_x7_vla.bridge.protocol import FragmentAssembler, ProtocolError

FAST = settings(max_examples=60, deadline=None)

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False) | names
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(names, c, max_size=4),
                           max_leaves=12)
msgs = st.dictionaries(names, json_values, max_size=5)


def every_op(topic: str, msg: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """One op of each kind the spec lists, built with the constructors."""
    return [
        P.advertise(topic, "std_msgs/String", op_id=f"a{n}"),
        P.unadvertise(topic),
        P.publish(topic, msg),
        P.subscribe(topic, "std_msgs/String", throttle_rate=n, queue_length=n, fragment_size=n + 1,
                    compression="cbor"),
        P.unsubscribe(topic, op_id="s"),
        P.call_service(topic, msg, op_id="c1"),
        P.service_response(topic, msg, True, op_id="c1"),
        P.advertise_service(topic, "std_srvs/Trigger"),
        P.unadvertise_service(topic),
        P.advertise_action(topic, "control_msgs/GripperCommand"),
        P.unadvertise_action(topic),
        P.send_action_goal(topic, "control_msgs/GripperCommand", msg, op_id="g1"),
        P.cancel_action_goal(topic, op_id="g1"),
        P.action_feedback(topic, msg, op_id="g1"),
        P.action_result(topic, msg, P.GoalStatus.SUCCEEDED, True, op_id="g1"),
        {"op": "fragment", "id": "f", "data": topic, "num": 0, "total": 1},
        P.status("warning", topic),
        P.set_level("error"),
    ]


@FAST
@given(topic=names, msg=msgs, n=st.integers(0, 1000))
def test_every_op_round_trips_json_and_cbor(topic: str, msg: dict[str, Any], n: int) -> None:
    ops = every_op(topic, msg, n)
    assert {o["op"] for o in ops} == set(P.OPS) - {"png"}
    for op in ops:
        assert P.decode_frame(P.encode_json(op)) == op
        assert P.decode_frame(P.encode_cbor(op), arrays="list") == op


def test_json_is_compared_parsed_and_accepts_escaped_slashes() -> None:
    # rosbridge's JSON may escape slashes; parsed equality is what matters.
    op = P.decode_frame('{"op":"publish","topic":"\\/camera\\/x","msg":{"data":"a"}}')
    assert op["topic"] == "/camera/x"


DTYPES = ["<u2", "<u4", "<u8", "i1", "<i2", "<i4", "<i8", "<f4", "<f8"]
TAGS = {"<u2": 69, "<u4": 70, "<u8": 71, "i1": 72, "<i2": 77, "<i4": 78, "<i8": 79, "<f4": 85, "<f8": 86}


@FAST
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_cbor_typed_arrays_every_dtype(data: st.DataObject, dtype: str) -> None:
    arr = data.draw(hnp.arrays(np.dtype(dtype), st.integers(0, 20),
                               elements={"allow_nan": False} if dtype.endswith(("f4", "f8")) else None))
    frame = P.encode_cbor(P.publish("/t", {"a": arr, "img": b"\x00\xffjpeg"}))
    raw = cbor2.loads(frame)  # the wire form itself: RFC 8746 tag, little-endian payload, bytes for uint8[]
    assert raw["msg"]["a"].tag == TAGS[dtype] and raw["msg"]["a"].value == arr.astype(dtype).tobytes()
    assert raw["msg"]["img"] == b"\x00\xffjpeg"
    op = P.decode_frame(frame)
    np.testing.assert_array_equal(op["msg"]["a"], arr)
    assert op["msg"]["a"].dtype == np.dtype(dtype)
    assert P.decode_frame(frame, arrays="list")["msg"]["a"] == arr.tolist()


def test_cbor_big_endian_tag_and_float_lists() -> None:
    be = cbor2.dumps({"op": "publish", "topic": "/t", "msg": {"a": cbor2.CBORTag(82, np.arange(3.0).astype(">f8").tobytes())}})
    np.testing.assert_array_equal(P.decode_frame(be)["msg"]["a"], [0.0, 1.0, 2.0])
    raw = cbor2.loads(P.encode_cbor(P.publish("/t", {"p": [0.5, 1.5], "n": [1, 2]})))
    assert raw["msg"]["p"].tag == 86 and raw["msg"]["n"] == [1, 2]


def test_json_bytes_and_uint8_arrays_become_base64() -> None:
    text = P.encode_json(P.publish("/t", {"data": b"\x01\x02", "u8": np.array([3, 4], np.uint8),
                                          "f": np.float32(0.5), "v": np.arange(2.0)}))
    msg = json.loads(text)["msg"]
    assert base64.b64decode(msg["data"]) == b"\x01\x02" and base64.b64decode(msg["u8"]) == b"\x03\x04"
    assert msg["f"] == 0.5 and msg["v"] == [0.0, 1.0]
    with pytest.raises(ProtocolError, match="cannot be encoded"):
        P.encode_json(P.publish("/t", {"x": object()}))


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        ("[1,2]", "must be a JSON/CBOR object"),
        ('{"topic":"/a"}', "no string 'op'"),
        ('{"op":"teleport"}', "unknown op"),
        ('{"op":"publish","topic":"/a"}', "missing required field 'msg'"),
        ('{"op":"subscribe","topic":"/a","queue_length":true}', "'queue_length' has type bool"),
        ('{"op":"subscribe","topic":"/a","compression":"zip"}', "compression 'zip'"),
        ('{"op":"subscribe","topic":"/a","throttle_rate":-5}', "throttle_rate must be >= 0"),
        ('{"op":"fragment","id":"x","data":"","num":3,"total":2}', "outside"),
        ("{not json", "not valid JSON"),
        (b"\xff\xff", "not valid CBOR"),
    ],
)
def test_bad_frames_name_the_problem(frame: str | bytes, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        P.decode_frame(frame)


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=200) | st.text(max_size=200))
def test_fuzz_decode_frame_only_raises_protocol_error(data: bytes | str) -> None:
    try:
        P.decode_frame(data)
    except ProtocolError:
        pass


ops_like = st.fixed_dictionaries({"op": st.sampled_from(sorted(P.OPS))},
                                 optional={k: json_values for k in ("topic", "msg", "id", "type", "num", "total",
                                                                    "data", "service", "action", "level",
                                                                    "compression", "queue_length", "result")})


@settings(max_examples=150, deadline=None)
@given(obj=ops_like)
def test_fuzz_structured_ops_only_raise_protocol_error(obj: dict[str, Any]) -> None:
    for frame in (json.dumps(obj), cbor2.dumps(obj)):
        try:
            P.decode_frame(frame)
        except ProtocolError:
            pass


@FAST
@given(text=st.text(max_size=3000), size=st.integers(1, 500), seed=st.integers(0, 2**16))
def test_fragments_reassemble_in_any_order(text: str, size: int, seed: int) -> None:
    op = P.publish("/big", {"data": text})
    frags = P.fragment_text(P.encode_json(op), size, "m1")
    random.Random(seed).shuffle(frags)
    asm = FragmentAssembler()
    results = [asm.add(f) for f in frags]
    assert results[:-1] == [None] * (len(frags) - 1) and results[-1] == op
    assert asm.pending_messages == 0 and asm.pending_bytes == 0


def test_fragment_assembler_memory_is_bounded() -> None:
    asm = FragmentAssembler(max_bytes=1000, max_messages=4)
    for i in range(100):  # a peer that starts messages and never finishes them
        assert asm.add({"op": "fragment", "id": f"m{i}", "data": "x" * 90, "num": 0, "total": 2}) is None
        assert asm.pending_messages <= 4 and asm.pending_bytes <= 1000
    assert asm.dropped == 96
    with pytest.raises(ProtocolError, match="exceeds 1000"):
        asm.add({"op": "fragment", "id": "huge", "data": "y" * 1001, "num": 0, "total": 2})
    # a complete message still goes through after the abuse
    frags = P.fragment_text(P.encode_json(P.publish("/a", {"data": "ok"})), 10, "fine")
    assert [asm.add(f) for f in frags][-1] == P.publish("/a", {"data": "ok"})


@FAST
@given(text=st.text(max_size=500))
def test_png_compression_round_trip(text: str) -> None:
    assert P.png_decode(P.png_encode(text.rstrip("\n"))) == text.rstrip("\n")


def test_png_decode_rejects_garbage() -> None:
    for bad in ("%%%", base64.b64encode(b"not a png").decode()):
        with pytest.raises(ProtocolError, match="png"):
            P.png_decode(bad)


@given(attempt=st.integers(0, 100), rand=st.floats(0, 0.999))
def test_backoff_is_capped_exponential_with_jitter(attempt: int, rand: float) -> None:
    d = backoff_delay(attempt, 0.25, 10.0, rand)
    step = min(10.0, 0.25 * 2**attempt)
    assert step / 2 <= d <= step <= 10.0
