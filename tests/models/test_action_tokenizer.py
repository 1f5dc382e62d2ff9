from __future__ import annotations

import numpy as np
import pytest

from crane_x7_vla.models.action_tokenizer import ActionTokenizer
from crane_x7_vla.models.normalization import (
    ActionStats,
    merge_norm_stats,
    normalize,
    select_unnorm_key,
    unnormalize,
)

TOK = ActionTokenizer(32000)


def test_ids_are_the_last_256_of_the_base_vocab() -> None:
    ids = TOK.token_ids()
    assert ids[0] == 31744 and ids[-1] == 31999 and len(ids) == 256
    assert TOK.encode([-1.0, 1.0]).tolist() == [31999, 31744]  # higher id = more negative action


def test_encode_decode_agree_on_every_bin() -> None:
    ids = TOK.token_ids()
    decoded = TOK.decode(ids)
    # 255 centres: every id but the top bin (31744, only reached by a == 1.0) round-trips exactly
    assert np.array_equal(TOK.encode(decoded[1:]), ids[1:])
    assert decoded[0] == decoded[1] == np.float32(TOK.bin_centers[-1])
    assert np.allclose(TOK.decode(TOK.encode(TOK.bin_centers)), TOK.bin_centers, atol=1e-7)
    # decoding clips out-of-range ids instead of indexing garbage
    assert TOK.decode([0, 40000]).tolist() == [pytest.approx(TOK.bin_centers[-1]), pytest.approx(TOK.bin_centers[0])]


def test_vocab_size_is_a_parameter_not_32000() -> None:
    mini = ActionTokenizer(151921)  # MiniVLA: len(tokenizer)
    assert mini.encode([-1.0]).tolist() == [151920]
    assert mini.token_ids()[0] == 151921 - 256


STATS = ActionStats(np.array([-2.0, 0.0, 5.0]), np.array([2.0, 1.0, 5.0]), np.array([True, False, True]))


def test_unnormalize_with_and_without_mask() -> None:
    a = np.array([[0.5, 0.25, -1.0]])
    out = unnormalize(a, STATS)
    assert out.tolist() == [[pytest.approx(1.0), pytest.approx(0.25), pytest.approx(5.0)]]
    all_true = ActionStats(STATS.q01, STATS.q99, np.ones(3, dtype=bool))
    assert unnormalize(a, all_true)[0, 1] == pytest.approx(0.5 * 1.25 * 1.0)


def test_normalize_inverts_unnormalize_and_zeros_constant_dims() -> None:
    x = np.array([[1.0, 0.3, 5.0], [9.0, 0.7, 5.0]])
    n = normalize(x, STATS)
    assert n[0].tolist() == [pytest.approx(0.5), pytest.approx(0.3), 0.0]
    assert n[1, 0] == 1.0  # clipped
    assert np.allclose(unnormalize(n[:1], STATS)[0, :2], [1.0, 0.3], atol=1e-6)


def test_stats_from_dict_defaults_mask_and_checks_shapes() -> None:
    s = ActionStats.from_stats({"action": {"q01": [0, 0], "q99": [1, 1]}})
    assert s.mask.tolist() == [True, True]
    with pytest.raises(ValueError, match="mask"):
        ActionStats.from_stats({"action": {"q01": [0, 0], "q99": [1, 1], "mask": [True]}}, "k")


def test_unnorm_key_selection() -> None:
    stats = {"bridge_orig": {}, "crane_x7": {}}
    assert select_unnorm_key({"only": {}}, None) == "only"
    with pytest.raises(ValueError, match=r"several datasets.*\['bridge_orig', 'crane_x7'\]"):
        select_unnorm_key(stats, None)
    with pytest.raises(ValueError, match=r"'crane_x8'.*Did you mean 'crane_x7'.*Available"):
        select_unnorm_key(stats, "crane_x8")
    assert merge_norm_stats({"a": 1, "b": 2}, {"b": 3}) == {"a": 1, "b": 3}
