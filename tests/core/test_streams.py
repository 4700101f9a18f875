import polars as pl
import pyarrow as pa
import pytest

from orcapod_core.columns import ColumnConfig
from orcapod_core.datagrams import Packet, Tag
from orcapod_core.errors import InputValidationError, SchemaMismatchError
from orcapod_core.sources import DictSource
from orcapod_core.streams import TableStream


def make_source(**kw):
    data = {"id": [3, 1, 2], "x": [30, 10, 20], "m": [{"a": "1"}, {}, {"b": "2"}]}
    return DictSource(data, tag_columns=["id"], source_id="src", schema={"m": dict[str, str]}, **kw)


def test_tag_and_packet_are_immutable_mappings_with_tables_and_hashes():
    p = Packet({"x": 1, "y": "a"}, hidden={"_source_x": "s::row_0::x"})
    assert dict(p) == {"x": 1, "y": "a"} and p == {"x": 1, "y": "a"}
    assert p.keys() == ("x", "y")
    assert p.keys(columns={"source": True}) == ("x", "y", "_source_x")
    assert p.as_table().to_pylist() == [{"x": 1, "y": "a"}]
    assert p.as_dict(all_info=True)["_content_hash"] == p.content_hash().to_string()
    assert p.schema() == {"x": int, "y": str}
    with pytest.raises(TypeError):
        p["x"] = 2  # type: ignore[index]
    # hidden provenance does not change content
    assert p.content_hash() == Packet({"x": 1, "y": "a"}).content_hash()
    assert p.content_hash() != Packet({"x": 2, "y": "a"}).content_hash()
    t = Tag({"id": 1}, hidden={"_tag_source_id::abc": "s"})
    assert t.system_tags == {"_tag_source_id::abc": "s"}
    assert t.as_table(columns={"system_tags": True}).column_names == ["id", "_tag_source_id::abc"]


def test_iterated_packets_hash_like_the_columnar_path():
    s = make_source()
    column = s.as_table(columns={"content_hash": True}).column("_content_hash").to_pylist()
    assert [p.content_hash().to_string() for _, p in s] == column
    assert len(set(column)) == 3


def test_map_values_come_back_as_dicts():
    s = make_source()
    assert [p["m"] for _, p in s] == [{"a": "1"}, {}, {"b": "2"}]


def test_sort_by_tags_and_polars():
    s = make_source()
    assert s.as_table(columns={"sort_by_tags": True}).column("id").to_pylist() == [1, 2, 3]
    assert s.as_table(columns=ColumnConfig(sort_by_tags=True, source=True)).column("_source_x").to_pylist()[0] == "src::row_1::x"
    df = s.as_polars()
    assert isinstance(df, pl.DataFrame) and df.columns == ["id", "x", "m"]
    assert df["x"].to_list() == [30, 10, 20]


def test_output_schema_keys_and_len():
    s = make_source()
    assert s.output_schema() == ({"id": int}, {"x": int, "m": dict[str, str]})
    tags, packets = s.keys(all_info=True)
    assert tags[0] == "id" and len(tags) == 3
    assert packets == ("x", "m", "_source_x", "_source_m", "_content_hash")
    assert len(s) == 3
    assert "DictSource" in repr(s)


def test_table_stream_identity_and_validation():
    t = pa.table({"id": [1, 2], "x": [1.0, 2.0]})
    a = TableStream(t, tag_columns=["id"])
    b = TableStream(t, tag_columns=["id"])
    c = TableStream(pa.table({"id": [1, 2], "x": [1.0, 3.0]}), tag_columns=["id"])
    assert a.content_hash() == b.content_hash() != c.content_hash()
    assert a.pipeline_hash() == c.pipeline_hash()
    with pytest.raises(SchemaMismatchError, match="nope"):
        TableStream(t, tag_columns=["nope"])


def test_column_config_resolution():
    assert ColumnConfig.resolve(["source", "meta"]) == ColumnConfig(source=True, meta=True)
    assert ColumnConfig.resolve({"all_info": True}).content_hash
    assert ColumnConfig.resolve(None, all_info=True) == ColumnConfig(True, True, True, True)
    with pytest.raises(InputValidationError, match="nonsense"):
        ColumnConfig.resolve("nonsense")
