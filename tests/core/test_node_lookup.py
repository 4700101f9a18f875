"""A function node's bulk result lookup: more than BULK_LOOKUP_KEYS packets read the function's
result columns whole and match them by packet hash; a result table much larger than the request
(the function shared by other pipelines) is still filtered to what was asked for. Either way
every row gets its own stored output and only unknown packets are computed."""

from __future__ import annotations

import pytest

from orcapod_core import function_pod
from orcapod_core.databases import DeltaTableDatabase
from orcapod_core.pipeline import Pipeline
from orcapod_core.pipeline.node_run import BULK_LOOKUP_KEYS
from orcapod_core.sources import DictSource


def _pipeline(store, name, xs, calls):
    @function_pod(output_keys="y", function_name="triple")
    def triple(x: int) -> int:
        calls.append(x)
        return 3 * x

    src = DictSource({"id": list(range(len(xs))), "x": xs}, tag_columns="id", source_id=f"src_{name}")
    with Pipeline(name, pipeline_database=DeltaTableDatabase(store)) as p:
        triple.pod(src, label="triple")
    return p


def _outputs(p):
    table = p.nodes["triple"].as_table()
    return dict(zip(table.column("id").to_pylist(), table.column("y").to_pylist()))


@pytest.mark.parametrize("shared", [2_000, 20_000], ids=["most-of-the-table", "table-10x-larger"])
def test_bulk_lookup_serves_stored_outputs_and_computes_only_new_packets(tmp_path, shared):
    n = BULK_LOOKUP_KEYS + 500
    calls: list[int] = []
    # Another pipeline fills the function's result table with `shared` packets.
    first = _pipeline(tmp_path, "other", list(range(shared)), calls)
    assert first.run().computed == shared
    calls.clear()
    # This one asks for n packets: half of them stored by the other pipeline, half new, some repeated.
    xs = [shared - n // 2 + i for i in range(n)]
    xs[-10:] = xs[:10]
    p = _pipeline(tmp_path, "mine", xs, calls)
    result = p.run()
    new = sorted(set(xs) - set(range(shared)))
    assert sorted(calls) == new and result.computed == len(new)
    assert _outputs(p) == {i: 3 * x for i, x in enumerate(xs)}
    calls.clear()
    again = _pipeline(tmp_path, "mine", xs, calls).run()
    assert calls == [] and again.computed == 0 and again.cached == n
