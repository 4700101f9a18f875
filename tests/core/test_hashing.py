import datetime
import hashlib
import json
import random
import struct
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from orcapod_core import hashing
from orcapod_core.errors import UnsupportedTypeError
from orcapod_core.hashing import (
    ContentHash,
    _encode_column,
    _schema_digest,
    canonical_json,
    combine_hashes,
    encode_value,
    hash_object,
    hash_rows,
    hash_table,
)
from orcapod_core.types import Schema, arrow_schema

# Golden values: computed once from the documented encoding (docs/concepts.md) and pinned,
# so any change to the encoding (which would invalidate every stored result) fails loudly.
GOLDEN_OBJECT = "orcapod_v1:444c2eb1b4ea4ce81f900698cd029e6ea5d604d5534a57bece2879591db586a7"
GOLDEN_ROWS = [
    "e8a4c28c4c3d7096917a499af66c1b4e87097d1342c820a064468bab09b9e91f",
    "3cddcd589a3d33db67d81e1f090d39986190b2a413bfba97ad8bb0537375a599",
]
GOLDEN_TABLE = "orcapod_v1:05465bed7c32f735c20f2ff447fdff3214d4d69e389472fefc403ebacd9db186"


def golden_table():
    return pa.table({"x": pa.array([1, None], pa.int64()), "s": pa.array(["a", "bc"], pa.large_string())})


def test_object_hash_golden_and_independent_derivation():
    obj = {"b": [1, 2.5, "x", None, True], "a": 1}
    expected = hashlib.sha256(
        json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    assert hash_object(obj).to_string() == f"orcapod_v1:{expected}" == GOLDEN_OBJECT


def test_row_hash_golden_and_independent_derivation():
    schema_digest = hashlib.sha256(b'{"s":"str","x":"int"}').digest()
    row0 = schema_digest + b"\x01" + struct.pack("<Q", 1) + b"a" + b"\x01" + struct.pack("<q", 1)
    row1 = schema_digest + b"\x01" + struct.pack("<Q", 2) + b"bc" + b"\x00"
    expected = [hashlib.sha256(row0).hexdigest(), hashlib.sha256(row1).hexdigest()]
    assert [d.hex() for d in hash_rows(golden_table()).to_pylist()] == expected == GOLDEN_ROWS
    assert hash_table(golden_table()).to_string() == GOLDEN_TABLE


def test_hashes_agree_across_fresh_processes():
    script = textwrap.dedent(
        """
        import pyarrow as pa
        from orcapod_core.hashing import hash_object, hash_rows, hash_table
        t = pa.table({"x": pa.array([1, None], pa.int64()), "s": pa.array(["a", "bc"], pa.large_string())})
        print(hash_object({"b": [1, 2.5, "x", None, True], "a": 1}).to_string())
        print(",".join(d.hex() for d in hash_rows(t).to_pylist()))
        print(hash_table(t).to_string())
        """
    )
    outputs = set()
    for seed in ("0", "12345"):  # different PYTHONHASHSEEDs: Python's hash() must play no role
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": seed}
        ).stdout
        outputs.add(out)
    assert outputs == {f"{GOLDEN_OBJECT}\n{','.join(GOLDEN_ROWS)}\n{GOLDEN_TABLE}\n"}


ALL_TYPES_SCHEMA = {
    "i": int | None,
    "f": float,
    "s": str | None,
    "b": bool,
    "by": bytes,
    "d": datetime.date,
    "ts": datetime.datetime,
    "t": datetime.time,
    "l": list[int | None],
    "m": dict[str, str],
    "ll": list[list[str]] | None,
}
ALL_TYPES_ROWS = [
    {"i": 1, "f": -0.5, "s": "é", "b": True, "by": b"\x00", "d": datetime.date(2020, 1, 1),
     "ts": datetime.datetime(2021, 5, 6, 7, 8, 9, 10), "t": datetime.time(1, 2, 3), "l": [1, None],
     "m": {"z": "1", "a": "2"}, "ll": [["a"], []]},
    {"i": None, "f": 1e300, "s": None, "b": False, "by": b"", "d": datetime.date(1969, 12, 31),
     "ts": datetime.datetime(1960, 1, 1), "t": datetime.time(23, 59, 59, 999999), "l": [],
     "m": {}, "ll": None},
]


def test_columnar_encoding_matches_reference_encoder_for_every_type():
    table = pa.Table.from_pylist(ALL_TYPES_ROWS, schema=arrow_schema(ALL_TYPES_SCHEMA))
    names = sorted(table.column_names)
    strings = {k: v.replace(" | None", "") for k, v in Schema(ALL_TYPES_SCHEMA).to_strings().items()}
    prefix = hashlib.sha256(canonical_json(strings)).digest()
    for i, row in enumerate(ALL_TYPES_ROWS):
        message = prefix + b"".join(encode_value(row[c], table.schema.field(c).type) for c in names)
        assert hash_rows(table)[i].as_py() == hashlib.sha256(message).digest(), f"row {i}"


def test_row_hash_is_independent_of_batching_chunking_and_column_order():
    table = pa.Table.from_pylist(ALL_TYPES_ROWS, schema=arrow_schema(ALL_TYPES_SCHEMA))
    whole = hash_rows(table).to_pylist()
    assert hash_rows(table.slice(1, 1)).to_pylist() == whole[1:]
    chunked = pa.concat_tables([table.slice(0, 1), table.slice(1, 1)])
    assert chunked.column(0).num_chunks == 2
    assert hash_rows(chunked).to_pylist() == whole
    reordered = table.select(list(reversed(table.column_names)))
    assert hash_rows(reordered).to_pylist() == whole


def test_row_hash_is_independent_of_the_hashing_slices(monkeypatch):
    # Large tables are hashed in slices of rows (bounded memory): slice boundaries that fall
    # inside chunks and list columns must not change any digest.
    rows = ALL_TYPES_ROWS * 5
    table = pa.Table.from_pylist(rows, schema=arrow_schema(ALL_TYPES_SCHEMA))
    chunked = pa.concat_tables([table.slice(0, 4), table.slice(4, 3), table.slice(7)])
    whole = hash_rows(table).to_pylist()
    monkeypatch.setattr(hashing, "_HASH_SLICE_ROWS", 3)
    assert hash_rows(chunked).to_pylist() == whole
    assert hash_rows(table, []).to_pylist() == [hash_rows(table.slice(0, 1), [])[0].as_py()] * len(rows)


def test_row_hash_depends_on_names_types_and_values_not_nullability():
    base = hash_rows(pa.table({"x": pa.array([1], pa.int64())}))[0]
    strict = pa.table({"x": pa.array([1], pa.int64())}, schema=pa.schema([pa.field("x", pa.int64(), nullable=False)]))
    assert hash_rows(strict)[0] == base
    assert hash_rows(pa.table({"y": pa.array([1], pa.int64())}))[0] != base
    assert hash_rows(pa.table({"x": pa.array([1.0], pa.float64())}))[0] != base
    assert hash_rows(pa.table({"x": pa.array([2], pa.int64())}))[0] != base
    # map key order does not matter; list order does
    m = pa.map_(pa.large_string(), pa.large_string())
    a = hash_rows(pa.table({"m": pa.array([[("a", "1"), ("b", "2")]], m)}))[0]
    b = hash_rows(pa.table({"m": pa.array([[("b", "2"), ("a", "1")]], m)}))[0]
    assert a == b
    # string boundaries are unambiguous thanks to the length prefix
    two = pa.table({"a": pa.array(["ab"], pa.large_string()), "b": pa.array(["c"], pa.large_string())})
    other = pa.table({"a": pa.array(["a"], pa.large_string()), "b": pa.array(["bc"], pa.large_string())})
    assert hash_rows(two)[0] != hash_rows(other)[0]


def test_hash_rows_of_empty_table():
    assert len(hash_rows(pa.table({"x": pa.array([], pa.int64())}))) == 0


def test_combine_hashes_ordered_vs_unordered():
    a, b = hash_object("a"), hash_object("b")
    assert combine_hashes([a, b]) != combine_hashes([b, a])
    assert combine_hashes([a, b], ordered=False) == combine_hashes([b, a], ordered=False)


def test_content_hash_value():
    h = hash_object([1])
    assert h.to_string() == f"{h.method}:{h.to_hex()}"
    assert h.to_hex(12) == h.to_hex()[:12]
    assert ContentHash.from_string(h.to_string()) == h


def test_canonical_json_handles_types_bytes_and_rejects_unknown_objects():
    assert canonical_json({"t": list[int], "b": b"\x01"}) == b'{"b":{"$bytes":"01"},"t":{"$type":"list[int]"}}'
    with pytest.raises(TypeError, match="object"):
        canonical_json({"x": object()})


# --------------------------------------------------------------------------------------
# Columnar list encoding == per-value reference encoding (hashes must never change)
# --------------------------------------------------------------------------------------

_LEAF_VALUES = {
    pa.int64(): lambda r: r.choice([0, -1, 1, 2**63 - 1, -(2**63), r.randint(-(10**12), 10**12)]),
    pa.float64(): lambda r: r.choice([0.0, -0.0, 1e300, float("inf"), float("nan"), r.uniform(-1e6, 1e6)]),
    pa.bool_(): lambda r: r.random() < 0.5,
    pa.large_string(): lambda r: r.choice(["", "a", "é€", "x" * r.randint(0, 40)]),
    pa.string(): lambda r: r.choice(["", "b", "ü", "y" * r.randint(0, 40)]),
    pa.large_binary(): lambda r: bytes(r.randrange(256) for _ in range(r.randint(0, 12))),
    pa.binary(): lambda r: bytes(r.randrange(256) for _ in range(r.randint(0, 12))),
    pa.date32(): lambda r: datetime.date(1970, 1, 1) + datetime.timedelta(days=r.randint(-40000, 40000)),
    pa.timestamp("us"): lambda r: datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=r.randint(-(10**15), 10**15)),
    pa.time64("us"): lambda r: datetime.time(r.randrange(24), r.randrange(60), r.randrange(60), r.randrange(10**6)),
}


def _random_value(r: random.Random, dtype: pa.DataType, null_rate: float = 0.15):
    if r.random() < null_rate:
        return None
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return [_random_value(r, dtype.value_type) for _ in range(r.choice([0, 0, 1, 2, 3, 10]))]
    if pa.types.is_map(dtype):
        keys = r.sample(range(50), r.randint(0, 4))
        return [(str(k), _random_value(r, dtype.item_type)) for k in keys]
    return _LEAF_VALUES[dtype](r)


LIST_TYPES = [
    pa.list_(pa.int64()),
    pa.large_list(pa.int64()),
    *[pa.large_list(leaf) for leaf in _LEAF_VALUES],
    pa.list_(pa.large_string()),
    pa.list_(pa.list_(pa.int64())),
    pa.large_list(pa.large_list(pa.large_string())),
    pa.large_list(pa.list_(pa.large_list(pa.float64()))),
    pa.large_list(pa.map_(pa.large_string(), pa.int64())),
    pa.large_list(pa.map_(pa.large_string(), pa.large_list(pa.large_string()))),
]


def _reference(arr) -> list[bytes]:
    return [encode_value(v, arr.type) for v in arr.to_pylist()]


@pytest.mark.parametrize("dtype", LIST_TYPES, ids=str)
def test_columnar_list_encoding_matches_the_reference_encoder(dtype):
    r = random.Random(str(dtype))
    values = [_random_value(r, dtype) for _ in range(300)] + [[], None, [None], [None, None]]
    arr = pa.array(values, dtype)
    assert _encode_column(arr).to_pylist() == _reference(arr)
    for start, length in [(1, 50), (137, 170), (299, 5), (305, 1), (0, 0), (10, 1)]:
        part = arr.slice(start, length)
        assert _encode_column(part).to_pylist() == _reference(part), (start, length)
    # hash_rows over a chunked, sliced column == per-value reference digest of each row
    table = pa.table({"c": pa.chunked_array([arr.slice(3, 40), arr.slice(200, 60), arr.slice(0, 0)], dtype)})
    try:
        schema_digest = _schema_digest([table.schema.field("c")])
    except UnsupportedTypeError:  # rows hold canonical (large) types only; the encoder takes any
        return
    expected = [hashlib.sha256(schema_digest + encode_value(v, dtype)).digest() for v in table["c"].to_pylist()]
    assert hash_rows(table).to_pylist() == expected


def test_columnar_list_encoding_with_null_slots_over_non_empty_ranges():
    # Arrow allows a null list slot to span child values; they must not leak into the encoding.
    values = pa.array([1, 2, 3, None, 5, 6], pa.int64())
    offsets = pa.array([0, 2, 4, 4, 6], pa.int32())
    arr = pa.ListArray.from_arrays(offsets, values, mask=pa.array([False, True, False, False]))
    assert arr.to_pylist() == [[1, 2], None, [], [5, 6]]
    assert _encode_column(arr).to_pylist() == _reference(arr)
    assert _encode_column(arr.slice(1)).to_pylist() == _reference(arr.slice(1))
    assert _encode_column(arr)[1].as_py() == b"\x00"


def test_list_encoding_bytes_are_the_documented_ones():
    arr = pa.array([[7, None], [], None], pa.large_list(pa.int64()))
    assert _encode_column(arr).to_pylist() == [
        b"\x01" + struct.pack("<Q", 2) + b"\x01" + struct.pack("<q", 7) + b"\x00",
        b"\x01" + struct.pack("<Q", 0),
        b"\x00",
    ]
    nested = pa.array([[["ab"], []]], pa.large_list(pa.large_list(pa.large_string())))
    assert _encode_column(nested)[0].as_py() == (
        b"\x01" + struct.pack("<Q", 2) + b"\x01" + struct.pack("<Q", 1) + b"\x01" + struct.pack("<Q", 2) + b"ab"
        + b"\x01" + struct.pack("<Q", 0)
    )


def test_lists_of_unsupported_items_keep_the_reference_behaviour():
    dtype = pa.large_list(pa.struct([("a", pa.int64())]))
    only_nulls = pa.array([[None], [], None], dtype)
    assert _encode_column(only_nulls).to_pylist() == _reference(only_nulls)
    with pytest.raises(TypeError, match="not a registered value type"):  # a struct that is no value type
        _encode_column(pa.array([[{"a": 1}]], dtype))


def test_every_nan_hashes_the_same_and_negative_zero_keeps_its_sign():
    """One documented rule: every NaN (any sign or payload, e.g. inf - inf) is one value; -0.0 is
    not 0.0 (1/x tells them apart, so a result for one must not serve the other)."""
    payload_nan = struct.unpack("<d", bytes.fromhex("010000000000f8ff"))[0]
    nans = [float("nan"), float("inf") - float("inf"), -float("nan"), payload_nan]
    assert len({struct.pack("<d", v) for v in nans}) > 1  # really different bit patterns
    assert len(set(hash_rows(pa.table({"x": pa.array(nans, pa.float64())})).to_pylist())) == 1
    lists = pa.array([[v, 1.0] for v in nans], pa.large_list(pa.float64()))
    assert len(set(hash_rows(pa.table({"x": lists})).to_pylist())) == 1
    assert len({encode_value(v, pa.float64()) for v in nans}) == 1
    assert encode_value(float("nan"), pa.float64()) == b"\x01" + bytes.fromhex("000000000000f87f")
    zeros = hash_rows(pa.table({"x": pa.array([0.0, -0.0], pa.float64())})).to_pylist()
    assert zeros[0] != zeros[1]
    from orcapod_core import Packet

    assert Packet({"x": float("inf") - float("inf")}).content_hash() == Packet({"x": float("nan")}).content_hash()


def _digest_hexes(n: int, width: int = 32) -> tuple[list[bytes], list[str]]:
    rng = random.Random(n * 31 + width)
    raw = [bytes(rng.getrandbits(8) for _ in range(width)) for _ in range(n)]
    return raw, [b.hex() for b in raw]


@pytest.mark.parametrize("width", [16, 32])
def test_hex_conversions_of_digest_columns_round_trip_sliced_and_chunked(width):
    # Digests of one width take the one-pass path; the answers are those of a per-value reference.
    raw, hexes = _digest_hexes(50, width)
    arr = pa.array(hexes, pa.large_string())
    for values, expect in [
        (arr, raw),
        (arr.slice(7, 20), raw[7:27]),
        (pa.chunked_array([arr.slice(0, 5), arr.slice(30, 4)]), raw[:5] + raw[30:34]),
        (pa.array(hexes, pa.string()), raw),
    ]:
        assert hashing.hex_problem(values) is None
        assert hashing.hex_to_bytes(values).to_pylist() == expect
    binaries = pa.array(raw, pa.binary(width))
    assert hashing.bytes_to_hex(binaries).to_pylist() == hexes
    assert hashing.bytes_to_hex(binaries.slice(3, 4)).to_pylist() == hexes[3:7]
    assert hashing.bytes_to_hex(pa.array(raw, pa.large_binary()).slice(9, 11)).to_pylist() == hexes[9:20]


def test_hex_conversions_of_mixed_lengths_and_nulls_match_the_reference():
    values = ["00ff", "ab", "", "0123456789abcdef"]
    assert hashing.hex_problem(pa.array(values)) is None
    assert hashing.hex_to_bytes(pa.array(values)).to_pylist() == [bytes.fromhex(v) for v in values]
    assert hashing.bytes_to_hex(pa.array([b"\x00\xff", None, b"a"])).to_pylist() == ["00ff", None, "61"]
    assert hashing.hex_problem(pa.array(["ab", None])) == "it contains nulls"


@pytest.mark.parametrize("change", [lambda h: h[:-1] + "g", lambda h: h.upper(), lambda h: h[:-2] + "é", lambda h: h[:-1]])
def test_hex_problem_names_the_first_value_that_is_not_lowercase_hex(change):
    _, hexes = _digest_hexes(40)
    bad = list(hexes)
    bad[17] = change(bad[17])
    assert hashing.hex_problem(pa.array(bad, pa.large_string())) == f"{bad[17]!r} is not lowercase hex of even length"


@pytest.mark.parametrize(
    "value, dtype", [(b"\x07" * 32, pa.large_binary()), (5, pa.int64()), ("node", pa.large_string()), (None, pa.large_string())]
)
def test_constant_columns_hash_like_a_column_repeating_the_value(value, dtype):
    t = pa.table({"a": pa.array(range(70_000), pa.int64()), "z": pa.array(["x", "yy"] * 35_000, pa.large_string())})
    repeated = t.append_column(pa.field("m", dtype), pa.array([value] * t.num_rows, dtype))
    assert hash_rows(t, constants={"m": (value, dtype)}).equals(hash_rows(repeated))
    # the constant's name is part of the row's identity, as a column's is
    assert not hash_rows(t, constants={"n": (value, dtype)}).equals(hash_rows(repeated))
    assert hash_rows(t.select([]), constants={"m": (value, dtype)}).equals(hash_rows(repeated.select(["m"])))


def test_digest_and_hex_arrays_live_in_arrows_memory_pool():
    # Arrays over Python-owned memory (pa.py_buffer) need the GIL wherever they are freed, and
    # Arrow frees them on its own threads too: at interpreter exit that aborted the process.
    # Allocated in Arrow's pool, they are counted by it (a py_buffer over bytes would not be).
    n = 20_000
    table = pa.table({"x": list(range(n))})
    before = pa.total_allocated_bytes()
    digests = hash_rows(table)
    hexes = hashing.digests_to_hex(digests)
    assert pa.total_allocated_bytes() - before >= n * 32 + n * 64
    assert hexes[0].as_py() == digests[0].as_py().hex()  # the same values as before
    assert hashing.digests_array(digests.buffers()[1].to_pybytes()).equals(digests)
    with pytest.raises(ValueError, match="33 bytes"):
        hashing.digests_array(bytes(33))
