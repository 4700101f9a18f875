import random

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from orcapod_core import keysets
from orcapod_core.keysets import all_distinct, distinct, index_in, is_in


@pytest.fixture(params=["arrow", "polars"])
def engine(request, monkeypatch):
    """Both paths: small inputs go to Arrow's kernels, larger ones to polars (forced here)."""
    if request.param == "polars":
        monkeypatch.setattr(keysets, "SMALL", 0)
    return request.param


def _array(values, dtype, chunked):
    arr = pa.array(values, dtype)
    return pa.chunked_array([arr.slice(0, len(arr) // 2), arr.slice(len(arr) // 2)]) if chunked else arr


@pytest.mark.parametrize("seed", range(5))
def test_is_in_and_index_in_agree_with_the_arrow_kernels(seed, engine):
    rng = random.Random(seed)
    pool = ["a", "b", "c", "d", "e", None]
    for _ in range(100):
        keys = _array([rng.choice(pool) for _ in range(rng.randint(0, 12))], pa.large_string(), rng.random() < 0.3)
        value_set = _array([rng.choice(pool) for _ in range(rng.randint(0, 8))], rng.choice([pa.large_string(), pa.string()]), False)
        assert sorted(distinct(keys).to_pylist(), key=str) == sorted(pc.unique(keys).to_pylist(), key=str)
        assert all_distinct(keys) == (len(pc.unique(keys)) == len(keys))
        mask = is_in(keys, value_set)
        assert isinstance(mask, pa.BooleanArray)
        assert mask.to_pylist() == pc.is_in(keys, value_set=value_set).to_pylist()
        present = pc.drop_null(keys)  # index_in is for keys without nulls
        positions = index_in(present, value_set)
        assert isinstance(positions, pa.Int64Array)
        assert positions.to_pylist() == pc.index_in(present, value_set=value_set).to_pylist()


def test_is_in_of_other_key_types_agrees_with_arrow(engine):
    floats = pa.array([0.0, -0.0, float("nan"), None, 1.5])
    assert is_in(floats, pa.array([-0.0, float("nan"), None])).to_pylist() == pc.is_in(
        floats, value_set=pa.array([-0.0, float("nan"), None])
    ).to_pylist()
    ints = pa.array([1, 2, 3], pa.int64())
    assert sorted(distinct(pa.array([2.0, 1.0, 2.0])).to_pylist()) == [1.0, 2.0]
    assert all_distinct(pa.array([0.0, 1.0])) and not all_distinct(pa.array([1.0, None, 1.0]))
    assert is_in(ints, pa.array([3, 1], pa.int64())).to_pylist() == [True, False, True]
    assert is_in(ints, pa.array([2], pa.int32())).to_pylist() == [False, True, False]
    assert index_in(ints, pa.array([3, 1], pa.int64())).to_pylist() == [1, None, 0]
    with pytest.raises(TypeError, match="int32"):
        index_in(ints, pa.array([2], pa.int32()))


def test_all_distinct_compares_values_when_their_hashes_collide(monkeypatch):
    monkeypatch.setattr(keysets, "SMALL", 0)  # the polars path
    keys = pa.array(["a", "b", "c"])
    assert all_distinct(keys) and not all_distinct(pa.array(["a", "b", "a"]))
    # Every hash equal (as if they collided): distinct values are still told apart.
    monkeypatch.setattr(pl.Series, "hash", lambda self, seed=0: pl.Series([7] * len(self), dtype=pl.UInt64))
    assert all_distinct(keys) and not all_distinct(pa.array(["a", "b", "a"]))


@pytest.mark.parametrize("dtype", [pa.large_string(), pa.large_binary(), pa.int64()])
def test_values_equal_to_the_keys_in_order_agree_with_the_arrow_kernels(dtype, engine):
    # A rerun's stored ids come in the order of its input: answered without a join, same answers.
    raw = [f"k{i:05d}" for i in range(3000)]
    values = raw if dtype == pa.large_string() else [v.encode() for v in raw] if dtype == pa.large_binary() else list(range(3000))
    keys = pa.array(values, dtype)
    for value_set in [keys, _array(values, dtype, True), pa.array(values[::-1], dtype), pa.array(values[:-1] + values[:1], dtype)]:
        expected_in = pc.is_in(keys, value_set=keysets.one_array(value_set))
        expected_at = pc.index_in(keys, value_set=keysets.one_array(value_set)).cast(pa.int64())
        assert is_in(keys, value_set).equals(expected_in)
        assert index_in(keys, value_set).equals(expected_at)
        if all_distinct(value_set):
            assert index_in(keys, value_set, distinct_values=True).equals(expected_at)
    assert keysets.same_values(keys, _array(values, dtype, True))
    assert not keysets.same_values(keys, pa.array(values[:1] + values[1:-1][::-1] + values[-1:], dtype))
    assert not keysets.same_values(keys, keys.slice(1))


@pytest.mark.parametrize("dtype", [pa.large_string(), pa.int64()])
def test_values_equal_to_the_first_keys_appended_rows_agree_with_the_arrow_kernels(dtype, engine):
    # A grown input: its first rows are the stored ids in order, the appended ones are looked up.
    values = [f"k{i:05d}" for i in range(3000)] if dtype == pa.large_string() else list(range(3000))
    stored = pa.array(values, dtype)
    grown = [*values, *values[:3], values[1500], *(values[:1] if dtype == pa.int64() else ["new", "other"])]
    keys = pa.array(grown, dtype)
    assert is_in(keys, stored).equals(pc.is_in(keys, value_set=stored))
    assert index_in(keys, stored, distinct_values=True).equals(pc.index_in(keys, value_set=stored).cast(pa.int64()))
    assert index_in(keys, _array(values, dtype, True), distinct_values=True).equals(pc.index_in(keys, value_set=stored).cast(pa.int64()))
