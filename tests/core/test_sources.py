import datetime
import hashlib

import polars as pl
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from orcapod_core.errors import DuplicateTagError, InputValidationError, UnsupportedTypeError
from orcapod_core.sources import (
    ArrowTableSource,
    CSVSource,
    DataFrameSource,
    DeltaTableSource,
    DictSource,
    ListSource,
)

ROWS = [{"subject": "s1", "age": 30, "score": 1.5}, {"subject": "s2", "age": 41, "score": 2.5}]


def sys_cols(source):
    return [c for c in source.as_table(columns={"system_tags": True}).column_names if c.startswith("_tag_")]


def test_dict_source_rows_columns_and_schema():
    s = DictSource(ROWS, tag_columns=["subject"], source_id="subjects")
    assert s.output_schema() == ({"subject": str}, {"age": int, "score": float})
    assert s.keys() == (("subject",), ("age", "score"))
    assert s.as_table().to_pylist() == ROWS
    assert [(t.as_dict(), p.as_dict()) for t, p in s] == [
        ({"subject": r["subject"]}, {"age": r["age"], "score": r["score"]}) for r in ROWS
    ]
    # columnar input gives the same stream
    columnar = DictSource({k: [r[k] for r in ROWS] for k in ROWS[0]}, tag_columns="subject", source_id="subjects")
    assert columnar.as_table(all_info=True).equals(s.as_table(all_info=True))
    assert columnar.content_hash() == s.content_hash()


def test_system_tags_and_source_info_format():
    s = DictSource(ROWS, tag_columns=["subject"], source_id="subjects")
    h = s.pipeline_hash().to_hex(12)
    assert sys_cols(s) == [f"_tag_source_id::{h}", f"_tag_record_id::{h}"]
    table = s.as_table(all_info=True)
    assert table.column(f"_tag_source_id::{h}").to_pylist() == ["subjects", "subjects"]
    assert table.column(f"_tag_record_id::{h}").to_pylist() == ["row_0", "row_1"]
    assert table.column("_source_age").to_pylist() == ["subjects::row_0::age", "subjects::row_1::age"]
    assert table.column("_source_score").to_pylist()[1] == "subjects::row_1::score"
    assert "_source_subject" not in table.column_names  # tags carry no source info
    tag, packet = next(iter(s))
    assert tag.system_tags == {f"_tag_source_id::{h}": "subjects", f"_tag_record_id::{h}": "row_0"}
    assert packet.source_info == {"age": "subjects::row_0::age", "score": "subjects::row_0::score"}


def test_record_id_column_gives_col_equals_value_record_ids():
    s = DictSource(ROWS, tag_columns=["subject"], source_id="subjects", record_id_column="subject")
    h = s.pipeline_hash().to_hex(12)
    table = s.as_table(all_info=True)
    assert table.column(f"_tag_record_id::{h}").to_pylist() == ["subject=s1", "subject=s2"]
    assert table.column("_source_age").to_pylist()[0] == "subjects::subject=s1::age"


def test_duplicate_record_ids_are_rejected_naming_the_column():
    with pytest.raises(DuplicateTagError, match="'subject'"):
        DictSource(ROWS + ROWS[:1], tag_columns=["subject"], record_id_column="subject")


def test_hidden_columns_are_hidden_by_default_and_selectable():
    s = DictSource(ROWS, tag_columns=["subject"])
    assert s.as_table().column_names == ["subject", "age", "score"]
    assert s.as_table(columns={"source": True}).column_names == ["subject", "age", "score", "_source_age", "_source_score"]
    all_cols = s.as_table(all_info=True).column_names
    assert all_cols[-1] == "_content_hash" and len(all_cols) == 3 + 2 + 2 + 1
    tags, packets = s.output_schema(columns=["system_tags", "content_hash"])
    assert len(tags) == 3 and packets["_content_hash"] is str
    with pytest.raises(InputValidationError, match="bogus"):
        s.as_table(columns={"bogus": True})


def test_content_hash_vs_pipeline_hash():
    a = DictSource(ROWS, tag_columns=["subject"], source_id="a")
    b = DictSource(ROWS, tag_columns=["subject"], source_id="b")
    other_shape = DictSource([{"subject": "s", "age": 1}], tag_columns=["subject"], source_id="a")
    assert a.pipeline_hash() == b.pipeline_hash()
    assert a.content_hash() != b.content_hash()
    assert a.pipeline_hash() != other_shape.pipeline_hash()
    # same explicit source_id with changed rows keeps the content identity (by design, see SPEC D)
    changed = DictSource([{**ROWS[0], "age": 99}, ROWS[1]], tag_columns=["subject"], source_id="a")
    assert changed.content_hash() == a.content_hash()


def test_default_source_id_is_a_hash_of_the_data():
    a = DictSource(ROWS, tag_columns=["subject"])
    same = DictSource(list(ROWS), tag_columns=["subject"])
    changed = DictSource([ROWS[0]], tag_columns=["subject"])
    assert a.source_id == same.source_id != changed.source_id
    assert a.content_hash() != changed.content_hash()


def test_golden_source_hashes():
    # pinned: changing the identity encoding invalidates every stored table, so it must be deliberate
    s = DictSource(ROWS, tag_columns=["subject"], source_id="subjects")
    assert s.pipeline_hash().to_string() == PINNED_PIPELINE
    assert s.content_hash().to_string() == PINNED_CONTENT


PINNED_PIPELINE = "orcapod_v1:e5d6faa918e65efe536485d0a6922b821ef227142489ff3139a7aa413ecceafb"
PINNED_CONTENT = "orcapod_v1:7fa297dcbcf70eb75c5f1a40736731fc4bf1923d70c2403d3f8e7769ecb0659a"


def test_source_hashes_follow_the_documented_encoding():
    shape = '"packet_schema":{"age":"int","score":"float"},"tag_schema":{"subject":"str"}'
    pipeline = hashlib.sha256(('{"kind":"source",' + shape + "}").encode()).hexdigest()
    content = hashlib.sha256(
        b'{"kind":"source","packet_schema":{"age":"int","score":"float"},"source_id":"subjects",'
        b'"tag_schema":{"subject":"str"}}'
    ).hexdigest()
    s = DictSource(ROWS, tag_columns=["subject"], source_id="subjects")
    assert s.pipeline_hash().to_hex() == pipeline
    assert s.content_hash().to_hex() == content


def test_bad_input_errors_name_the_column():
    with pytest.raises(InputValidationError, match="'nope'"):
        DictSource(ROWS, tag_columns=["nope"])
    with pytest.raises(InputValidationError, match="'_tag_x'"):
        DictSource([{"_tag_x": 1, "a": 2}], tag_columns=["a"])
    with pytest.raises(InputValidationError, match="'missing'"):
        DictSource(ROWS, tag_columns=["subject"], record_id_column="missing")
    with pytest.raises(UnsupportedTypeError, match="'bad'"):
        DictSource({"k": [1], "bad": [1]}, tag_columns=["k"], schema={"bad": set[int]})
    with pytest.raises(InputValidationError, match="schema"):
        DictSource([], tag_columns=["k"])


def test_explicit_schema_sets_types_and_allows_empty_data():
    s = DictSource({"k": [1, 2], "v": [1, 2]}, tag_columns=["k"], schema={"v": float | None})
    assert s.output_schema()[1] == {"v": float | None}
    assert s.as_table().column("v").to_pylist() == [1.0, 2.0]
    empty = DictSource([], tag_columns=["k"], schema={"k": int, "v": str})
    assert empty.output_schema() == ({"k": int}, {"v": str}) and len(empty) == 0
    with pytest.raises(InputValidationError, match="'v'"):
        DictSource({"k": [1], "v": ["not a number"]}, tag_columns=["k"], schema={"v": int})


def test_nullability_inferred_from_data():
    s = DictSource({"k": [1, 2], "v": [1, None], "w": [1, 2]}, tag_columns=["k"])
    assert s.output_schema()[1] == {"v": int | None, "w": int}


def test_rich_types_survive():
    data = {
        "k": [1],
        "m": [{"a": "b"}],
        "l": [[[1, 2], [3]]],
        "d": [datetime.date(2024, 1, 2)],
        "ts": [datetime.datetime(2024, 1, 2, 3, 4)],
    }
    s = DictSource(data, tag_columns=["k"], schema={"m": dict[str, str], "l": list[list[int]]})
    assert s.output_schema()[1] == {"m": dict[str, str], "l": list[list[int]], "d": datetime.date, "ts": datetime.datetime}
    _, packet = next(iter(s))
    assert packet["m"] == {"a": "b"} and packet["l"] == [[1, 2], [3]] and packet["ts"] == data["ts"][0]


def test_list_source():
    s = ListSource("path", ["a.txt", "b.txt"])
    assert s.output_schema() == ({"element_index": int}, {"path": str})
    assert s.as_table().to_pylist() == [{"element_index": 0, "path": "a.txt"}, {"element_index": 1, "path": "b.txt"}]
    named = ListSource("path", ["a.txt"], tag_function=lambda v, i: {"file": v.split(".")[0]})
    assert named.as_table().to_pylist() == [{"file": "a", "path": "a.txt"}]


def test_arrow_and_dataframe_sources_match_dict_source():
    table = pa.Table.from_pylist(ROWS)
    expected = DictSource(ROWS, tag_columns=["subject"], source_id="x").as_table(all_info=True)
    assert ArrowTableSource(table, ["subject"], source_id="x").as_table(all_info=True).equals(expected)
    df = pl.DataFrame(ROWS)
    assert DataFrameSource(df, ["subject"], source_id="x").as_table(all_info=True).equals(expected)
    assert DataFrameSource(df.lazy(), ["subject"], source_id="x").as_table(all_info=True).equals(expected)
    with pytest.raises(InputValidationError, match="pyarrow.Table"):
        ArrowTableSource({"a": 1}, ["a"])  # type: ignore[arg-type]


def test_csv_source(tmp_path):
    path = tmp_path / "subjects.csv"
    path.write_text("subject,age,score\ns1,30,1.5\ns2,41,2.5\n")
    s = CSVSource(path, tag_columns=["subject"], record_id_column="subject")
    assert s.source_id == str(path)
    assert s.label == "subjects"
    assert s.as_table().to_pylist() == ROWS
    typed = CSVSource(path, tag_columns=["subject"], schema={"age": float})
    assert typed.output_schema()[1] == {"age": float, "score": float}
    assert typed.to_config()["path"] == str(path)
    with pytest.raises(InputValidationError, match="not found"):
        CSVSource(tmp_path / "nope.csv", tag_columns=["subject"])


def test_delta_table_source(tmp_path):
    uri = str(tmp_path / "subjects")
    write_deltalake(uri, pa.Table.from_pylist(ROWS))
    s = DeltaTableSource(uri, tag_columns=["subject"])
    assert s.as_table().to_pylist() == ROWS
    assert s.source_id == uri and s.version == 0
    write_deltalake(uri, pa.Table.from_pylist([{"subject": "s3", "age": 5, "score": 0.0}]), mode="append")
    assert len(DeltaTableSource(uri, tag_columns=["subject"])) == 3
    assert len(DeltaTableSource(uri, tag_columns=["subject"], version=0)) == 2
    with pytest.raises(InputValidationError, match="no Delta table"):
        DeltaTableSource(str(tmp_path / "missing"), tag_columns=["subject"])


def test_delta_source_rows_keep_their_record_ids_when_rows_are_appended(tmp_path):
    from orcapod_core.databases import InMemoryArrowDatabase
    from orcapod_core import function_pod
    from orcapod_core.pipeline import Pipeline

    path = str(tmp_path / "table")
    for ids_ in ([0, 1, 2], [3, 4], [5, 6]):  # three commits: deltalake lists the newest file first
        write_deltalake(path, pa.table({"id": ids_, "x": [10 * i for i in ids_]}), mode="append")

    def ids(source):
        table = source.as_table(all_info=True)
        record = next(c for c in table.column_names if c.startswith("_tag_record_id"))
        return dict(zip(table.column("id").to_pylist(), table.column(record).to_pylist()))

    before = ids(DeltaTableSource(path, tag_columns="id"))
    assert before == {i: f"row_{i}" for i in range(7)}  # commit order, whatever the file listing order

    @function_pod(output_keys="y")
    def double(x: int) -> int:
        return 2 * x

    db = InMemoryArrowDatabase()

    def run():
        with Pipeline("p", db) as p:
            double.pod(DeltaTableSource(path, tag_columns="id"), label="double")
        return p

    run().run()
    write_deltalake(path, pa.table({"id": [7], "x": [9]}), mode="append")
    after = ids(DeltaTableSource(path, tag_columns="id"))
    assert {k: after[k] for k in before} == before and after[7] == "row_7"
    p = run()
    p.run()
    assert len(p.double.get_pipeline_records()) == 8  # only the appended row got a new record


# -- values are never silently changed (E2) ------------------------------------------------


def test_every_source_refuses_a_value_its_declared_type_would_change():
    """A declared int fed 2.5 raises naming the column (Arrow alone would store 2), whatever the source."""
    with pytest.raises(InputValidationError, match=r"column 'x' \(declared int\).*float 2.5 would be stored as 2"):
        DictSource({"k": [1, 2], "x": [1, 2.5]}, tag_columns="k", schema={"x": int})
    with pytest.raises(InputValidationError, match=r"column 'x'.*list \[1.5\] would be stored as \[1\]"):
        DictSource({"k": [1], "x": [[1.5]]}, tag_columns="k", schema={"x": list[int]})
    with pytest.raises(InputValidationError, match="'x'"):
        ListSource("x", [1, 2.5], schema={"element_index": int, "x": int})
    with pytest.raises(InputValidationError, match="'x'"):
        ArrowTableSource(pa.table({"k": [1], "x": [2.5]}), "k", schema={"x": int})
    with pytest.raises(InputValidationError, match="'x'"):
        DataFrameSource(pl.DataFrame({"k": [1], "x": [2.5]}), "k", schema={"x": int})
    # what arrives unchanged is kept: an integral float, exact int → float widening
    assert DictSource({"k": [1], "x": [2.0]}, "k", schema={"x": int}).as_table().column("x").to_pylist() == [2]
    assert DictSource({"k": [1], "x": [3]}, "k", schema={"x": float}).as_table().column("x").to_pylist() == [3.0]


def test_maps_with_a_repeated_key_and_values_nested_too_deeply_are_orcapod_errors():
    maps = pa.array([[("a", 1)], [("a", 1), ("a", 2)]], pa.map_(pa.large_string(), pa.int64()))
    with pytest.raises(InputValidationError, match=r"column 'm': row 1 holds a map with the key 'a' more than once"):
        ArrowTableSource(pa.table({"k": [1, 2], "m": maps}), "k")
    with pytest.raises(InputValidationError, match="'m'.*key 'a'"):
        DictSource({"k": [1], "m": [[("a", 1), ("a", 2)]]}, "k", schema={"m": dict[str, int]})
    deep: object = 1
    for _ in range(1000):
        deep = [deep]
    with pytest.raises(UnsupportedTypeError, match="'x'.*nests more than 64 levels"):
        DictSource({"k": [1], "x": [deep]}, "k")


# -- live, lazy file sources (E5) ------------------------------------------------------------


def _spy_reads(source):
    """Count the source's data reads (a spy around the read it makes)."""
    reads = []
    original = source._read
    source._read = lambda: reads.append(1) or original()
    return reads


def test_building_a_delta_source_reads_its_metadata_only(tmp_path):
    """Types from the table's schema, nullability from the log's null counts: the data files
    are not needed until rows are read (here they are deleted to prove it)."""
    uri = tmp_path / "t"
    write_deltalake(uri, pa.table({"id": [1, 2], "x": [1.5, None], "name": ["a", "b"]}))
    write_deltalake(uri, pa.table({"id": [3], "x": [2.5], "name": ["c"]}), mode="append")
    for part in uri.glob("*.parquet"):
        part.unlink()
    source = DeltaTableSource(uri, tag_columns="id")
    assert source.output_schema() == ({"id": int}, {"x": float | None, "name": str})
    assert source.version == 1 and source.fingerprint() == "delta:1"
    with pytest.raises(Exception):  # the rows are read now, and their files are gone
        source.as_table()


def test_a_delta_column_without_null_counts_is_read_unless_declared(tmp_path):
    uri = tmp_path / "t"
    write_deltalake(uri, pa.table({"id": [1, 2], "xs": [[1, 2], [3]]}))
    assert DeltaTableSource(uri, tag_columns="id").output_schema()[1] == {"xs": list[int]}  # read: items never null
    for part in uri.glob("*.parquet"):
        part.unlink()
    declared = DeltaTableSource(uri, tag_columns="id", schema={"xs": list[int | None] | None})
    assert declared.output_schema()[1] == {"xs": list[int | None] | None}  # no read needed


def test_a_delta_source_reads_the_version_current_at_refresh_and_a_pinned_one_never_moves(tmp_path):
    uri = tmp_path / "t"
    write_deltalake(uri, pa.table({"id": [1], "x": [1.0]}))
    live, pinned = DeltaTableSource(uri, "id"), DeltaTableSource(uri, "id", version=0)
    write_deltalake(uri, pa.table({"id": [2], "x": [2.0]}), mode="append")
    assert live.version == 0 and len(live) == 1  # built at version 0: reads version 0 until refreshed
    live.refresh()
    assert live.version == 1 and live.fingerprint() == "delta:1"
    write_deltalake(uri, pa.table({"id": [3], "x": [3.0]}), mode="append")  # after the refresh...
    assert len(live) == 2  # ... the read is pinned to version 1
    live.refresh()
    assert len(live) == 3
    pinned.refresh()
    assert len(pinned) == 1 and pinned.fingerprint() == "delta:0"


def test_building_a_csv_source_reads_only_its_first_block(tmp_path):
    from orcapod_core.sources.files import CSV_SAMPLE_BYTES

    path = tmp_path / "big.csv"
    good = "".join(f"{i},{i * 0.5}\n" for i in range(CSV_SAMPLE_BYTES // 8))
    path.write_text("id,x\n" + good + "999999999,not a number\n")
    source = CSVSource(path, tag_columns="id")  # types from the first block: the bad row is not read
    assert source.output_schema() == ({"id": int}, {"x": float})
    reads = _spy_reads(source)
    assert reads == []
    with pytest.raises(InputValidationError, match=r"big.csv.*CSV column #1 \('x'\).*not a number"):
        source.as_table()
    assert reads == [1]


def test_csv_empty_fields_are_null_in_optional_columns_and_empty_strings_in_str_columns(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text('id,note,label,ph\n1,a,x,7.1\n2,,,\n3,"","",6.5\n')
    inferred = CSVSource(path, tag_columns="id")
    assert inferred.output_schema()[1] == {"note": str | None, "label": str | None, "ph": float | None}
    assert inferred.as_table().to_pylist() == [
        {"id": 1, "note": "a", "label": "x", "ph": 7.1},
        {"id": 2, "note": None, "label": None, "ph": None},  # empty field: null, as polars reads it
        {"id": 3, "note": "", "label": "", "ph": 6.5},  # a quoted "" is the empty string
    ]
    declared = CSVSource(path, tag_columns="id", schema={"note": str | None, "label": str})
    assert declared.as_table().column("note").to_pylist() == ["a", None, ""]
    assert declared.as_table().column("label").to_pylist() == ["x", "", ""]  # str cannot be null


def test_a_long_lived_pipeline_sees_rows_appended_to_its_csv_source(tmp_path):
    from orcapod_core import DeltaTableDatabase, Pipeline, function_pod

    calls = []

    @function_pod(output_keys="y")
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    path = tmp_path / "in.csv"
    path.write_text("id,x\n1,10\n2,20\n")
    with Pipeline("live", DeltaTableDatabase(tmp_path / "store")) as p:
        double.pod(CSVSource(path, tag_columns="id"), label="double")
    assert p.run().computed == 2
    with path.open("a") as fh:
        fh.write("3,30\n")
    again = p.run()  # the same pipeline object: the run reads the file's current content
    assert (again.computed, again.cached) == (1, 2) and calls == [10, 20, 30]
    assert p.double.as_table().column("y").to_pylist() == [20, 40, 60]
    with path.open("a") as fh:
        fh.write("4,oops\n")
    with pytest.raises(InputValidationError, match=r"in.csv.*'x'.*oops"):
        p.run()
    assert len(p.double.get_pipeline_records()) == 3  # nothing stored was lost


def test_a_delta_source_that_gains_nulls_fails_naming_the_column_and_the_fix(tmp_path):
    from orcapod_core import InMemoryArrowDatabase, Pipeline, function_pod

    @function_pod(output_keys="y")
    def inc(x: float) -> float:
        return x + 1

    uri = tmp_path / "t"
    write_deltalake(uri, pa.table({"id": [1], "x": [1.0]}))
    with Pipeline("p", InMemoryArrowDatabase()) as p:
        inc.pod(DeltaTableSource(uri, tag_columns="id"), label="inc")
    p.run()
    write_deltalake(uri, pa.table({"id": [2], "x": pa.array([None], pa.float64())}), mode="append")
    with pytest.raises(InputValidationError, match=r"column 'x' \(float\) has no value in row 1; .*schema=\{'x': float \| None\}"):
        p.run()
