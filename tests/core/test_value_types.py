"""Value types: NumPy arrays built in (dtype + shape + bytes), ``register_type`` for domain objects,
usable in schemas, function annotations, hashing, storage and save/load."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pytest

import orcapod_core as oc
from orcapod_core.errors import UnsupportedTypeError
from orcapod_core.hashing import canonical_json, hash_rows
from orcapod_core.types import python_to_arrow, schema_from_arrow, type_from_string, type_to_string
from orcapod_core.values import strict_array
from orcapod_core.value_types import register_type, to_python, value_type_for_arrow

ARRAY = pa.field("a", python_to_arrow(np.ndarray), nullable=False)


def array_table(values) -> pa.Table:
    return pa.table({"a": strict_array(values, ARRAY)})


ARRAYS = [
    np.arange(6, dtype=np.int64).reshape(2, 3),
    np.array([1.5, -0.0]),
    np.array(["ab", "c"]),
    np.zeros((0, 2), dtype=np.uint8),
    np.array(True),
]
# The digests of ARRAYS as of orcapod_v1: stores written today must keep matching.
GOLDEN = [
    "8e57d0d53d84bf16d48cca5c5519ee9861f880d8378115fcf449adc12360d2d0",
    "c8f00da2d266655d1d69d6e677096330bd2fdcf1839e23e45e1110c9bb1302b3",
    "8ac4f46ae51c5f028441489d475eba881ecf68134984f5e153e8121c29404e7f",
    "0c8a28f5d706ca1594b0fb1f9e53b414873ede93c41fcdc09521174e08fafea4",
    "8d07b57c577decb4a13492353f9b82ab2b1f8921a575ee9e2d0f805d31fb689d",
]


def test_arrays_round_trip_exactly():
    back = to_python(array_table(ARRAYS).column("a"))
    for given, got in zip(ARRAYS, back):
        assert got.dtype == given.dtype and got.shape == given.shape and np.array_equal(got, given)
        got.flat[:0] = 0  # a writable array, not a view of Arrow's buffer
    fortran = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    (back,) = to_python(array_table([fortran]).column("a"))
    assert np.array_equal(back, fortran)


def test_array_hashes_are_pinned_and_follow_the_documented_encoding():
    assert [d.hex() for d in hash_rows(array_table(ARRAYS)).to_pylist()] == GOLDEN

    def field(data: bytes) -> bytes:
        return b"\x01" + struct.pack("<Q", len(data)) + data

    a = ARRAYS[0]
    shape = b"\x01" + struct.pack("<Q", 2) + b"".join(b"\x01" + struct.pack("<q", n) for n in a.shape)
    value = b"\x01" + field(b"<i8") + shape + field(a.tobytes())
    prefix = hashlib.sha256(canonical_json({"a": "numpy.ndarray"})).digest()
    assert hashlib.sha256(prefix + value).hexdigest() == GOLDEN[0]


def test_equal_arrays_hash_equal_whatever_their_layout_or_byte_order():
    base = np.arange(6.0).reshape(2, 3)
    same = [base, np.asfortranarray(base), base.astype(">f8"), base.T.copy().T]
    assert len(set(hash_rows(array_table(same)).to_pylist())) == 1
    different = [base, base.reshape(3, 2), base.astype(np.float32), base + 1]
    assert len(set(hash_rows(array_table(different)).to_pylist())) == 4


def test_arrays_in_schemas_and_annotations():
    assert type_to_string(np.ndarray) == "numpy.ndarray"
    assert type_from_string("list[numpy.ndarray] | None") == list[np.ndarray] | None
    assert python_to_arrow(npt.NDArray[np.float64]) == python_to_arrow(np.ndarray)
    assert schema_from_arrow(pa.schema([ARRAY])) == {"a": np.ndarray}
    with pytest.raises(TypeError, match="expected numpy.ndarray"):
        strict_array([[1.0, 2.0]], ARRAY)  # a list is no array: nothing is converted silently
    with pytest.raises(TypeError, match="object"):
        strict_array([np.array([object()])], ARRAY)


@oc.function_pod(output_keys="normalized")
def normalize(trace: np.ndarray) -> np.ndarray:
    return (trace - trace.mean()) / trace.std()


def test_array_valued_pipeline_is_stored_and_cached(tmp_path):
    traces = [np.array([1.0, 2.0, 3.0]), np.array([4.0, 4.5, 6.0])]

    def build():
        with oc.Pipeline("arrays", oc.DeltaTableDatabase(tmp_path / "store")) as pipeline:
            source = oc.DictSource({"trial": [1, 2], "trace": traces}, tag_columns="trial", label="traces")
            normalize.pod(source, label="normalized")
        return pipeline

    first = build()
    assert first.run().stats["normalized"].computed == 2
    second = build()
    assert second.run().stats["normalized"].cached == 2
    got = {t["trial"]: p["normalized"] for t, p in second.normalized}
    assert np.allclose(got[1], normalize.pod.packet_function.function(traces[0]))


@dataclasses.dataclass(frozen=True)
class Recording:
    """A domain object: where a recording lives and how it was sampled."""

    session: str
    rate_hz: float
    channels: tuple[str, ...]


RECORDING = register_type(
    Recording,
    name="lab.Recording",
    arrow_type=pa.struct(
        [
            pa.field("session", pa.large_string(), nullable=False),
            pa.field("rate_hz", pa.float64(), nullable=False),
            pa.field("channels", pa.large_list(pa.field("item", pa.large_string(), nullable=False)), nullable=False),
        ]
    ),
    to_arrow=lambda r: {"session": r.session, "rate_hz": r.rate_hz, "channels": list(r.channels)},
    from_arrow=lambda d: Recording(d["session"], d["rate_hz"], tuple(d["channels"])),
)


@oc.function_pod(output_keys="duration_s")
def duration(recording: Recording, samples: int) -> float:
    return samples / recording.rate_hz


@oc.function_pod(output_keys="resampled")
def resample(recording: Recording) -> Recording:
    return dataclasses.replace(recording, rate_hz=recording.rate_hz / 2)


def recordings_pipeline(store: Path) -> oc.Pipeline:
    with oc.Pipeline("recordings", oc.DeltaTableDatabase(store)) as pipeline:
        source = oc.DictSource(
            {
                "id": [1, 2],
                "recording": [Recording("s1", 1000.0, ("a", "b")), Recording("s2", 500.0, ("a",))],
                "samples": [2000, 2000],
            },
            tag_columns="id",
            label="recordings",
        )
        duration.pod(source, label="durations")
        resample.pod(source.drop_packet_columns("samples"), label="resampled")
    return pipeline


def test_a_registered_type_is_a_first_class_value(tmp_path):
    assert value_type_for_arrow(python_to_arrow(Recording)) is RECORDING
    assert type_to_string(Recording) == "lab.Recording" and type_from_string("lab.Recording") is Recording
    pipeline = recordings_pipeline(tmp_path / "store")
    pipeline.run()
    assert {t["id"]: p["duration_s"] for t, p in pipeline.durations} == {1: 2.0, 2: 4.0}
    assert {t["id"]: p["resampled"] for t, p in pipeline.resampled} == {
        1: Recording("s1", 500.0, ("a", "b")),
        2: Recording("s2", 250.0, ("a",)),
    }
    pipeline.save(tmp_path / "pipeline.json")
    saved = json.loads((tmp_path / "pipeline.json").read_text())
    assert "lab.Recording" in json.dumps(saved)
    # A new process that imports the type's module loads the pipeline and serves everything stored.
    script = textwrap.dedent(
        f"""
        import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
        import test_value_types
        import orcapod_core as oc
        loaded = oc.Pipeline.load({str(tmp_path / 'pipeline.json')!r}, allowed_modules=["test_value_types"])
        stats = loaded.run().stats
        print(stats["durations"].cached, stats["resampled"].cached, sorted(p["resampled"].rate_hz for _, p in loaded.resampled))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["2", "2", "[250.0,", "500.0]"]


def test_registering_clashing_types_is_refused():
    with pytest.raises(UnsupportedTypeError, match="already registered"):
        register_type(str, name="lab.Recording", arrow_type=pa.large_string(), to_arrow=str, from_arrow=str)
    with pytest.raises(UnsupportedTypeError, match="already registered"):
        register_type(bytes, name="lab.Other", arrow_type=RECORDING.arrow_type, to_arrow=str, from_arrow=str)
    with pytest.raises(UnsupportedTypeError, match="field 'x' has Arrow type"):
        register_type(bytes, name="lab.Bad", arrow_type=pa.struct([("x", pa.int8())]), to_arrow=str, from_arrow=str)
