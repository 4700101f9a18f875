"""A pod reads only its parameters (spec E8): packet columns that are not parameters are not
passed and not part of the input packet hash, so changing one recomputes nothing;
``passthrough=True`` keeps the input packet's columns (with their source info) beside the
outputs; a missing parameter's error says how to fix it; existing hashes are unchanged."""

from __future__ import annotations

import json
import pathlib

import pyarrow as pa
import pytest

from orcapod_core import DeltaTableDatabase, DictSource, InMemoryArrowDatabase, Pipeline, function_pod
from orcapod_core.errors import InputValidationError, PipelineLoadError, SchemaMismatchError
from orcapod_core.function_pods import FunctionPod
from orcapod_core.hashing import digests_to_hex, hash_rows
from orcapod_core.pipeline import AsyncPipelineOrchestrator, SyncPipelineOrchestrator
from orcapod_core.pipeline.nodes import ENTRY_ID_COLUMN
from orcapod_core.pipeline.snapshots import load_snapshot, save_snapshot
from orcapod_core.result_cache import CachedFunctionPod, ResultCache, result_record_path
from orcapod_core.sources import CSVSource

CALLS: list[dict] = []


@function_pod(output_keys="y", identity="declared", version="v1")
def scaled(x: int, factor: int = 3) -> int:
    CALLS.append({"x": x, "factor": factor})
    return x * factor


@function_pod(output_keys=["s", "d"], identity="declared")
def sum_diff(x: int, w: float) -> tuple[float, float]:
    return x + w, x - w


@pytest.fixture(autouse=True)
def _fresh_calls():
    CALLS.clear()


def numbers(xs=(4, 5, 4), notes=("a", "b", "c"), source_id="a", **more):
    ids = list(range(1, len(xs) + 1))
    return DictSource({"id": ids, "x": list(xs), "note": list(notes), **more}, tag_columns="id", source_id=source_id)


def rows(stream, **columns):
    return stream.as_table(columns={"sort_by_tags": True, **columns}).to_pylist()


# -- extra columns are ignored ----------------------------------------------------------------


def test_extra_columns_are_not_passed_and_not_part_of_the_input_packet_hash():
    with_note = scaled.pod(numbers(notes=("a", "b", "c")))
    assert with_note.read_columns == ("x",)
    assert with_note.output_schema() == ({"id": int}, {"y": int})  # tags + outputs, as before
    assert rows(with_note) == [{"id": 1, "y": 12}, {"id": 2, "y": 15}, {"id": 3, "y": 12}]
    assert CALLS == [{"x": 4, "factor": 3}, {"x": 5, "factor": 3}]  # the function got x only (4 once)

    # The record id in the source info is the hash of the parameters' columns only: the same
    # whatever the unread column holds, and the same as for a stream without it.
    bare = DictSource({"id": [1, 2, 3], "x": [4, 5, 4]}, tag_columns="id", source_id="a")
    other_notes = scaled.pod(numbers(notes=("z", "z", "z")))
    expected = [f"{scaled.pod.uri}::{h}::y" for h in digests_to_hex(hash_rows(bare.as_table(), ["x"])).to_pylist()]
    for stream in (with_note, other_notes, scaled.pod(bare)):
        assert [r["_source_y"] for r in rows(stream, source=True)] == expected


def test_two_rows_differing_only_in_an_unread_column_are_one_computation():
    out = scaled.pod(numbers(xs=(7, 7), notes=("first", "second")))
    assert rows(out) == [{"id": 1, "y": 21}, {"id": 2, "y": 21}]
    assert CALLS == [{"x": 7, "factor": 3}]


def _pipeline(store, src, *, passthrough=False, orchestrator=None):
    with Pipeline("lab", pipeline_database=DeltaTableDatabase(store)) as p:
        scaled.pod(src, label="scaled", passthrough=passthrough)
    return p, p.run(orchestrator=orchestrator)


def _result_rows(p):
    return ResultCache(p.result_database, result_record_path(scaled.pod.packet_function)).get_all_records()


@pytest.mark.parametrize("source_id", ["a", None], ids=["explicit-source-id", "data-hash-source-id"])
def test_changing_an_unread_column_recomputes_nothing(tmp_path, source_id):
    store = tmp_path / "store"
    p, first = _pipeline(store, numbers(notes=("a", "b", "c"), source_id=source_id))
    assert (first.computed, first.cached) == (2, 1) and len(CALLS) == 2
    before = rows(p.scaled)

    CALLS.clear()
    q, second = _pipeline(store, numbers(notes=("changed", "notes", "only"), source_id=source_id))
    assert second.computed == 0 and second.cached == 3 and CALLS == []
    assert rows(q.scaled) == before
    assert _result_rows(q).num_rows == 2  # the result cache served both packets


def test_changing_a_read_column_recomputes_exactly_those_packets(tmp_path):
    store = tmp_path / "store"
    _pipeline(store, numbers(xs=(4, 5, 4)))
    CALLS.clear()
    q, second = _pipeline(store, numbers(xs=(4, 6, 4), notes=("x", "y", "z")))
    assert CALLS == [{"x": 6, "factor": 3}] and (second.computed, second.cached) == (1, 2)
    assert [r["y"] for r in rows(q.scaled)] == [12, 18, 12]


def test_pipeline_records_derive_the_input_source_info_of_the_read_columns(tmp_path):
    p, _ = _pipeline(tmp_path / "store", numbers())
    records = p.scaled.get_pipeline_records().to_pylist(maps_as_pydicts="strict")
    assert sorted(r["__input_source_info"]["x"] for r in records) == ["a::row_0::x", "a::row_1::x", "a::row_2::x"]
    assert all(set(r["__input_source_info"]) == {"x"} for r in records)
    assert "note" not in p.scaled.database.get_all_records(p.scaled.record_path).column_names


# -- passthrough -------------------------------------------------------------------------------


def test_passthrough_keeps_every_input_packet_column_and_its_source_info():
    src = numbers()
    out = scaled.pod(src, passthrough=True)
    # Predicted without computing: the function has not been called.
    assert out.output_schema() == ({"id": int}, {"x": int, "note": str, "y": int})
    assert out.keys(columns={"source": True})[1] == ("x", "note", "y", "_source_x", "_source_note", "_source_y")
    assert CALLS == []
    got = rows(out, source=True, system_tags=True)
    given = rows(src, source=True, system_tags=True)
    for g, s in zip(got, given):
        assert {k: g[k] for k in s} == s  # tags, system tags, x, note and their source info unchanged
        assert g["y"] == 3 * s["x"] and g["_source_y"].startswith(f"{scaled.pod.uri}::")
    # Same computation and record ids as without passthrough.
    plain = rows(scaled.pod(src), source=True)
    assert [(r["y"], r["_source_y"]) for r in got] == [(r["y"], r["_source_y"]) for r in plain]


def test_every_way_of_applying_a_pod_takes_passthrough():
    src = numbers()
    expected = ({"id": int}, {"x": int, "note": str, "y": int})
    assert scaled.pod.process(src, passthrough=True).output_schema() == expected
    assert FunctionPod(scaled.pod.packet_function, passthrough=True)(src).output_schema() == expected
    pod = scaled.pod.with_passthrough(True)
    assert pod.passthrough and not scaled.pod.passthrough and pod(src).output_schema() == expected
    assert pod(src, passthrough=False).output_schema() == ({"id": int}, {"y": int})
    assert scaled.pod.with_passthrough(False) is scaled.pod
    cached = CachedFunctionPod(pod, ResultCache(InMemoryArrowDatabase(), ("results", "scaled")))
    assert cached.passthrough is True and cached(src).output_schema() == expected
    with pytest.raises(InputValidationError, match="passthrough must be True or False"):
        scaled.pod(src, passthrough="yes")
    # Hashes: a passthrough stream is a different stream; the function identity is the same.
    plain, kept = scaled.pod(src), scaled.pod(src, passthrough=True)
    assert plain.content_hash() != kept.content_hash() and plain.pipeline_hash() != kept.pipeline_hash()
    assert scaled.pod(src, passthrough=True).content_hash() == kept.content_hash()


def test_passthrough_of_several_inputs_keeps_the_joined_packet_columns():
    weights = DictSource({"id": [1, 2], "w": [0.5, 1.5], "unit": ["kg", "g"]}, tag_columns="id", source_id="w")
    out = sum_diff.pod(numbers(xs=(4, 5), notes=("a", "b")), weights, passthrough=True)
    assert out.output_schema()[1] == {"x": int, "note": str, "w": float, "unit": str, "s": float, "d": float}
    got = rows(out, source=True)
    assert [(r["x"], r["w"], r["unit"], r["s"]) for r in got] == [(4, 0.5, "kg", 4.5), (5, 1.5, "g", 6.5)]
    assert got[0]["_source_unit"] == "w::row_0::unit" and got[1]["_source_note"] == "a::row_1::note"


def test_an_output_named_like_an_input_column_raises_when_the_pod_is_applied():
    @function_pod(output_keys=["y", "note"])
    def tagged(x: int) -> tuple[int, str]:
        raise AssertionError("never called")

    with pytest.raises(SchemaMismatchError) as info:
        tagged.pod(numbers(), passthrough=True)
    message = str(info.value)
    assert "'tagged'" in message and "['note']" in message and "passthrough" in message
    # Without passthrough the input column is not kept, so the name is free.
    assert tagged.pod(numbers()).output_schema() == ({"id": int}, {"y": int, "note": str})


@pytest.mark.parametrize("orchestrator", [SyncPipelineOrchestrator(), AsyncPipelineOrchestrator(buffer_size=1)], ids=["sync", "async"])
def test_a_passthrough_node_stores_no_input_columns_and_serves_the_current_ones(tmp_path, orchestrator):
    store = tmp_path / "store"
    p, first = _pipeline(store, numbers(notes=("a", "b", "c")), passthrough=True, orchestrator=orchestrator)
    assert first.computed == 2
    assert rows(p.scaled) == [
        {"id": 1, "x": 4, "note": "a", "y": 12}, {"id": 2, "x": 5, "note": "b", "y": 15}, {"id": 3, "x": 4, "note": "c", "y": 12},
    ]
    stored = p.scaled.database.get_all_records(p.scaled.record_path)
    assert not {"x", "note", "_source_x", "_source_note"} & set(stored.column_names)
    assert {"x", "note"}.isdisjoint(_result_rows(p).column_names)

    # Same source id, an unread value changed: nothing computed, every entry already recorded,
    # and the output shows the current value.
    q, second = _pipeline(store, numbers(notes=("a", "B!", "c")), passthrough=True, orchestrator=orchestrator)
    assert second.computed == 0 and CALLS[2:] == []
    assert q.scaled.get_pipeline_records().num_rows == 3
    assert [r["note"] for r in rows(q.scaled)] == ["a", "B!", "c"]
    assert rows(q.scaled, source=True)[1]["_source_note"] == "a::row_1::note"
    # A fresh pipeline object reading without running serves the same rows.
    with Pipeline("lab", pipeline_database=DeltaTableDatabase(store)) as r:
        scaled.pod(numbers(notes=("a", "B!", "c")), label="scaled", passthrough=True)
    assert rows(r.scaled, source=True) == rows(q.scaled, source=True)


def test_execute_packet_of_a_passthrough_node_returns_the_kept_columns_too(tmp_path):
    p, _ = _pipeline(tmp_path / "store", numbers(), passthrough=True)
    tag, packet = next(iter(p.scaled.upstream_nodes[0]))
    out = p.scaled.execute_packet(tag, packet)
    assert out.as_dict() == {"x": 4, "note": "a", "y": 12}


def test_a_passthrough_snapshot_reads_back_exactly_and_versions_unread_values(tmp_path):
    store = tmp_path / "store"
    p, _ = _pipeline(store, numbers(notes=("a", "b", "c")), passthrough=True)
    snap = save_snapshot(p.scaled)
    back = load_snapshot(p.pipeline_database, snap.path, snap.data_version)
    assert back.as_table(all_info=True).equals(p.scaled.as_table(all_info=True))

    q, _ = _pipeline(store, numbers(notes=("a", "B!", "c")), passthrough=True)
    changed = save_snapshot(q.scaled)
    assert changed.data_version != snap.data_version  # same entry ids, different rows
    assert [r["note"] for r in load_snapshot(q.pipeline_database, changed.path, changed.data_version).as_table().to_pylist()] == ["a", "B!", "c"]
    # The first snapshot still reads its own rows.
    assert back.as_table().equals(load_snapshot(q.pipeline_database, snap.path, snap.data_version).as_table())

    # A plain node over a stream with an unread column: its snapshot hashes the read columns only.
    r, _ = _pipeline(tmp_path / "plain", numbers(notes=("a", "b", "c")))
    plain = save_snapshot(r.scaled)
    assert load_snapshot(r.pipeline_database, plain.path, plain.data_version).as_table(all_info=True).equals(
        r.scaled.as_table(all_info=True)
    )


def test_passthrough_survives_save_and_load(tmp_path):
    csv = tmp_path / "numbers.csv"
    csv.write_text("id,x,note\n1,4,a\n2,5,b\n")
    with Pipeline("lab", pipeline_database=DeltaTableDatabase(tmp_path / "store")) as p:
        kept = scaled.pod(CSVSource(csv, tag_columns="id"), label="kept", passthrough=True)
        scaled.pod(kept.map_packets({"x": "x0", "y": "x"}), label="plain")
    assert p.kept.pod.passthrough is True and p.plain.pod.passthrough is False  # recorded in the block
    p.run()
    path = p.save(tmp_path / "lab.json")
    saved = {n["label"]: n for n in json.loads(path.read_text())["nodes"]}
    assert saved["kept"]["passthrough"] is True and "passthrough" not in saved["plain"]

    loaded = Pipeline.load(path)
    assert loaded.kept.pod.passthrough is True and loaded.plain.pod.passthrough is False
    for label in ("kept", "plain"):
        assert loaded.nodes[label].content_hash() == p.nodes[label].content_hash()
        assert loaded.nodes[label].record_path == p.nodes[label].record_path
    assert rows(loaded.kept, source=True) == rows(p.kept, source=True)
    assert loaded.kept.output_schema() == ({"id": int}, {"x": int, "note": str, "y": int})
    CALLS.clear()
    assert loaded.run().computed == 0 and CALLS == []

    doc = json.loads(path.read_text())
    next(n for n in doc["nodes"] if n["label"] == "kept")["passthrough"] = "yes"
    path.write_text(json.dumps(doc))
    with pytest.raises(PipelineLoadError, match="node 'kept': field 'passthrough' is 'yes'"):
        Pipeline.load(path)


# -- schema errors ------------------------------------------------------------------------------


def test_a_missing_parameter_error_names_it_and_suggests_the_rename():
    @function_pod(output_keys="bmi")
    def bmi(weight_kg: float, height_m: float) -> float:
        return weight_kg / height_m**2

    src = DictSource({"id": [1], "weight_kg": [70.0], "label": ["p"], "height_cm": [175.0]}, tag_columns="id")
    with pytest.raises(SchemaMismatchError) as info:
        bmi.pod(src)
    message = str(info.value)
    assert "parameter 'height_m' (float) has no column in the stream" in message
    assert "['weight_kg', 'label', 'height_cm']" in message
    # The suggested column is one whose type fits the parameter (not 'label', a str).
    assert "`stream.map_packets({'height_cm': 'height_m'})`" in message

    tagged = DictSource({"height_m": [1.75], "weight_kg": [70.0]}, tag_columns="height_m")
    with pytest.raises(SchemaMismatchError, match="'height_m' is a tag column, and tags are not passed to functions"):
        bmi.pod(tagged)
    nothing_left = DictSource({"id": [1], "weight_kg": [70.0]}, tag_columns="id")
    with pytest.raises(SchemaMismatchError, match=r"packet columns \['weight_kg'\] are all read by other parameters"):
        bmi.pod(nothing_left)
    # A type mismatch keeps its own message.
    with pytest.raises(SchemaMismatchError, match="column 'height_m' is str but parameter 'height_m' expects float"):
        bmi.pod(DictSource({"id": [1], "weight_kg": [70.0], "height_m": ["tall"]}, tag_columns="id"))


# -- hashes of the exact-parameter case are unchanged -------------------------------------------

# Computed on main before unread columns were allowed (a stream whose packet columns are
# exactly the parameters); stores written then must keep their keys.
GOLDEN = {
    "scaled": {
        "content": "orcapod_v1:600182a70f455de650a01c66e4d22e3f548c8b6d0fd941f7dfac120288b9799b",
        "pipeline": "orcapod_v1:255c41fc178660fd13a1d8cab66840a107b8a1e5534d6ed229f281641f083663",
        "record_path": ["golden", "scaled", "255c41fc178660fd"],
        "entry_ids": ["8cde8da31ecd888cec3d543811fe1bc5", "731d1144ce0922277640c953a9e70698", "1e79cfed5b8ea1397ac1ffd4a3dec777"],
        "packet_hashes": [
            "e52a28f864561498e4b188b52ba5e20ca3a48adb694ad8d9fdc2f0e5df293ee1",
            "889c084c6f1129a95114e9b072d294efa98f8ea68f20642d220345bcdb76876e",
            "e52a28f864561498e4b188b52ba5e20ca3a48adb694ad8d9fdc2f0e5df293ee1",
        ],
        "uri": "scaled/v1/ced613451b726406",
    },
    # A two-input pod reads a Join. Since system tags keep short origin names after joins
    # (issue 11), a join names them differently and so is a different producer: its identity,
    # record path and entry ids changed then (before: content db4615f3..., pipeline 531c3dfd...,
    # path golden/sd/531c3dfdf1f0f84b); its packet hashes and results did not.
    "sd": {
        "content": "orcapod_v1:1b34babbbbb520af462afd14ab92d3429d4cf274c475fc3706d324ac8df03e64",
        "pipeline": "orcapod_v1:df0b5d9fe1da35fb4285a85ac93bd32774d02d1a0c85f4a62fbcd04b425e2868",
        "record_path": ["golden", "sd", "df0b5d9fe1da35fb"],
        "entry_ids": ["d94966085b1a32bce5555eac58aa19cc", "f90b0f799686c873b8173482e74f610a", "ca8629e76fd03bfffabdc811c766d939"],
        "packet_hashes": [
            "51691c3fba8a5edad709b061a0b4a387bdcf3eb90f4129cae2db197f53af6727",
            "ec6c635a1c457376b30de05706a0dde9d21c682edd66def61af72fca1112218e",
            "7d207bcf7199a57e5574242d2507a7b121bc2dc25717dcb9a893df49b6676146",
        ],
        "uri": "sum_diff/v0/4f79091c02a8b6e3",
    },
}


def test_hashes_of_a_stream_with_exactly_the_parameters_are_unchanged(tmp_path):
    a = DictSource({"id": [1, 2, 3], "x": [4, 5, 4]}, tag_columns="id", source_id="a")
    b = DictSource({"id": [1, 2, 3], "w": [0.5, 1.5, 2.5]}, tag_columns="id", source_id="b")
    with Pipeline("golden", pipeline_database=DeltaTableDatabase(tmp_path / "store")) as p:
        scaled.pod(a, label="scaled")  # the optional 'factor' has no column: still exact
        sum_diff.pod(a, b, label="sd")
    p.run()
    for label, golden in GOLDEN.items():
        node = p.nodes[label]
        assert node.content_hash().to_string() == golden["content"]
        assert node.pipeline_hash().to_string() == golden["pipeline"]
        assert list(node.record_path) == golden["record_path"]
        stored = node.database.get_all_records(node.record_path).sort_by("id")
        assert stored[ENTRY_ID_COLUMN].to_pylist() == golden["entry_ids"]
        assert stored["__packet_hash"].to_pylist() == golden["packet_hashes"]
        out = node.as_table(columns={"source": True, "sort_by_tags": True})
        key = node.packet_function.output_keys[0]
        assert out[f"_source_{key}"].to_pylist() == [f"{golden['uri']}::{h}::{key}" for h in golden["packet_hashes"]]
    assert scaled.pod(a).content_hash().to_string() == GOLDEN["scaled"]["content"]
    assert scaled.pod(a).pipeline_hash().to_string() == GOLDEN["scaled"]["pipeline"]


def test_an_unread_file_column_is_not_read_and_its_edit_recomputes_only_its_readers(tmp_path):
    doc = tmp_path / "notes.txt"
    doc.write_text("hello")
    read: list[str] = []

    @function_pod(output_keys="n")
    def length(doc: pathlib.Path) -> int:
        read.append(doc.name)
        return len(doc.read_text())

    def run():
        src = DictSource({"id": [1], "x": [4], "doc": [doc]}, tag_columns="id", source_id="files")
        with Pipeline("lab", pipeline_database=DeltaTableDatabase(tmp_path / "store")) as p:
            kept = scaled.pod(src, label="scaled", passthrough=True)  # carries 'doc' past, unread
            length.pod(kept, label="length")
        return p, p.run()

    p, first = run()
    assert (first.stats["scaled"].computed, first.stats["length"].computed) == (1, 1)
    assert p.length.as_table().to_pylist() == [{"id": 1, "n": 5}]
    doc.write_text("hello world")  # the file's content is the identity of a Path value
    q, second = run()
    assert (second.stats["scaled"].computed, second.stats["length"].computed) == (0, 1)
    assert q.length.as_table().to_pylist() == [{"id": 1, "n": 11}] and read == ["notes.txt", "notes.txt"]
