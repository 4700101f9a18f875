"""Function identity without a source file (E3): the code-object hash fallback."""

import json
import subprocess
import sys
import textwrap

import pytest

from orcapod_core import function_pod
from orcapod_core.function_identity import code_hash, code_identity, normalized_source
from orcapod_core.errors import FunctionDefinitionError


def exec_function(body: str, name: str = "f"):
    """A pod function defined with exec: inspect.getsource cannot read it."""
    namespace = {"function_pod": function_pod}
    exec(textwrap.dedent(body), namespace)
    return namespace[name]


BASE = """
@function_pod(output_keys="y")
def f(x: int, k: int = 2) -> int:
    '''Scale x.'''
    values = {"a", "b", "c"}
    return x * k + len(values)
"""


def test_a_function_without_source_works_with_source_identity():
    f = exec_function(BASE)
    with pytest.raises(FunctionDefinitionError):
        normalized_source(f)  # the source really is unreadable
    pf = f.pod.packet_function
    assert pf.identity_mode == "source"
    assert "code_hash" in pf.identity_structure() and "source_hash" not in pf.identity_structure()
    from orcapod_core import DictSource

    out = f.pod(DictSource({"id": [1, 2], "x": [1, 5]}, "id", source_id="s")).as_table()
    assert out.column("y").to_pylist() == [5, 13]


def test_code_hash_is_deterministic_and_sees_every_change_to_what_is_computed():
    base = exec_function(BASE).pod.packet_function.identity_hash()
    assert exec_function(BASE).pod.packet_function.identity_hash() == base
    # A docstring, blank lines and comments do not matter...
    same = BASE.replace("'''Scale x.'''", "'''Multiply x by k.'''").replace("    values", "\n    # a comment\n    values")
    assert exec_function(same).pod.packet_function.identity_hash() == base
    # ... what it computes does.
    changed = [
        BASE.replace("x * k", "x * k + 1"),
        BASE.replace("k: int = 2", "k: int = 3"),  # a default value
        BASE.replace('{"a", "b", "c"}', '{"a", "b", "d"}'),  # a frozenset constant
        BASE.replace("len(values)", "len(sorted(values))"),  # a global name
        BASE.replace("return x * k + len(values)", "total = x * k\n    return total + len(values)"),  # a local
    ]
    hashes = {exec_function(body).pod.packet_function.identity_hash() for body in changed}
    assert base not in hashes and len(hashes) == len(changed)


def test_nested_functions_and_closures_are_part_of_the_code_hash():
    def outer(delta):
        def f(x: int) -> int:
            return (lambda v: v + delta)(x)

        return f

    body = "def g(x: int) -> int:\n    return (lambda v: v + 1)(x)\n"
    other = "def g(x: int) -> int:\n    return (lambda v: v + 2)(x)\n"
    ns1, ns2 = {}, {}
    exec(body, ns1)
    exec(other, ns2)
    assert code_hash(ns1["g"]) != code_hash(ns2["g"])  # the nested lambda's constant differs
    assert code_identity(outer(1))[0] == "source_hash"  # with a source file, the source is used


def test_the_code_hash_is_the_same_in_every_process():
    """Two fresh `python -c` processes define the same function: same identity; a changed body: another."""
    script = textwrap.dedent(
        """
        import json, sys
        from orcapod_core import function_pod

        @function_pod(output_keys="y")
        def f(x: int) -> int:
            labels = {"low", "mid", "high"}
            return x * FACTOR if "mid" in labels else 0

        print(json.dumps([f.pod.packet_function.identity_structure()["code_hash"], f.pod.packet_function.uri]))
        """
    )
    runs = []
    for seed in ("1", "2", "1"):  # string hashing (set order) differs between processes
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": seed, "PATH": ""}
        )
        runs.append(json.loads(out.stdout))
    assert runs[0] == runs[1] == runs[2]
    changed = subprocess.run(
        [sys.executable, "-c", script.replace("x * FACTOR", "x * FACTOR + 1")], capture_output=True, text=True, check=True
    )
    assert json.loads(changed.stdout)[0] != runs[0][0]


def test_a_python_c_pipeline_is_memoized_across_processes(tmp_path):
    """The user's case: a pipeline in `python -c`, run twice in two processes, computes once."""
    script = textwrap.dedent(
        f"""
        import json
        from orcapod_core import DeltaTableDatabase, DictSource, Pipeline, function_pod

        @function_pod(output_keys="y")
        def f(x: int) -> int:
            return x + 1

        src = DictSource({{"id": [1, 2, 3], "x": [1, 2, 2]}}, "id", source_id="s")
        with Pipeline("p", DeltaTableDatabase({str(tmp_path / "store")!r})) as p:
            f.pod(src, label="out")
        r = p.run()
        print(json.dumps([r.computed, r.cached, p.out.as_table().column("y").to_pylist()]))
        """
    )
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(first.stdout) == [2, 1, [2, 3, 3]]
    assert json.loads(second.stdout) == [0, 3, [2, 3, 3]]
    edited = subprocess.run([sys.executable, "-c", script.replace("x + 1", "x + 10")], capture_output=True, text=True, check=True)
    assert json.loads(edited.stdout) == [2, 1, [11, 12, 12]]  # a body change is never a stale hit
