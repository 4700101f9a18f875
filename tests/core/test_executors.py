import asyncio
import dataclasses
import threading
from typing import ClassVar

import pytest

from orcapod_core import executors
from orcapod_core.errors import ExecutorTypeError, InputValidationError
from orcapod_core.executors import LocalPythonFunctionExecutor, PythonFunctionExecutor, run_coroutine_sync
from orcapod_core.function_pods import FunctionPod, function_pod
from orcapod_core.packet_function import PythonPacketFunction
from orcapod_core.sources import DictSource


def double(x: int) -> int:
    return 2 * x


def fails_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("two")
    return x


async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


@dataclasses.dataclass(frozen=True)
class OtherExecutor(PythonFunctionExecutor):
    """Runs only 'other' functions — never Python ones."""

    executor_type: ClassVar[str] = "other"
    supported_function_types: ClassVar[frozenset[str]] = frozenset({"other"})

    def execute_callable(self, fn, kwargs):
        return fn(**kwargs)


@dataclasses.dataclass(frozen=True)
class CountingExecutor(LocalPythonFunctionExecutor):
    executor_type: ClassVar[str] = "counting"
    batches: list = dataclasses.field(default_factory=list, compare=False)

    def execute_batch(self, fn, kwargs_list, *, fail_fast=False):
        self.batches.append(len(kwargs_list))
        return super().execute_batch(fn, kwargs_list, fail_fast=fail_fast)


def test_executors_are_immutable_values():
    ex = LocalPythonFunctionExecutor()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ex.max_workers = 3  # type: ignore[misc]
    four = ex.with_options(max_workers=4)
    assert four is not ex and four.max_workers == 4 and ex.max_workers == 1
    assert ex.with_options() == ex and ex.with_options() is not ex
    assert LocalPythonFunctionExecutor() == LocalPythonFunctionExecutor()
    with pytest.raises(InputValidationError, match="no option.*'workers'"):
        ex.with_options(workers=2)
    with pytest.raises(InputValidationError, match="max_workers"):
        LocalPythonFunctionExecutor(max_workers=0)


def test_executor_description():
    ex = LocalPythonFunctionExecutor(max_workers=3)
    assert ex.executor_type == "local"
    assert ex.supported_function_types == {"python"}
    assert ex.supports("python") and not ex.supports("other")
    assert ex.get_executor_data() == {"executor_type": "local", "max_workers": "3"}
    assert ex.get_executor_data_schema() == {"executor_type": str, "max_workers": str}


def test_execute_callable_takes_a_plain_callable_and_kwargs():
    ex = LocalPythonFunctionExecutor()
    assert ex.execute_callable(double, {"x": 4}) == 8
    assert ex.execute_callable(async_double, {"x": 4}) == 8
    assert asyncio.run(ex.async_execute_callable(double, {"x": 5})) == 10
    assert asyncio.run(ex.async_execute_callable(async_double, {"x": 5})) == 10
    assert asyncio.run(ex.with_options(max_workers=2).async_execute_callable(double, {"x": 5})) == 10
    with pytest.raises(ValueError, match="two"):
        ex.execute_callable(fails_on_two, {"x": 2})


@pytest.mark.parametrize("max_workers", [1, 3])
def test_execute_batch_returns_results_or_exceptions_in_order(max_workers):
    ex = LocalPythonFunctionExecutor(max_workers=max_workers)
    out = ex.execute_batch(fails_on_two, [{"x": i} for i in range(5)])
    assert [o if not isinstance(o, Exception) else "err" for o in out] == [0, 1, "err", 3, 4]
    assert isinstance(out[2], ValueError)
    fast = ex.execute_batch(fails_on_two, [{"x": i} for i in range(5)], fail_fast=True)
    assert fast[:2] == [0, 1] and isinstance(fast[-1], ValueError) and len(fast) == 3
    assert ex.execute_batch(double, []) == []


def test_execute_batch_with_async_function_gathers():
    ex = LocalPythonFunctionExecutor()
    assert ex.execute_batch(async_double, [{"x": i} for i in range(4)]) == [0, 2, 4, 6]


def test_thread_pool_executor_runs_packets_in_parallel():
    barrier = threading.Barrier(2, timeout=10)

    def meet(x: int) -> int:
        barrier.wait()  # only passes when two calls run at the same time
        return x

    ex = LocalPythonFunctionExecutor(max_workers=2)
    assert ex.execute_batch(meet, [{"x": 1}, {"x": 2}]) == [1, 2]

    pf = PythonPacketFunction(meet, output_keys="y", executor=ex)
    src = DictSource({"id": [1, 2, 3, 4], "x": [1, 2, 3, 4]}, tag_columns="id")
    assert FunctionPod(pf)(src).as_table().column("y").to_pylist() == [1, 2, 3, 4]


def test_run_coroutine_sync_inside_and_outside_a_loop():
    assert run_coroutine_sync(async_double(2)) == 4

    async def main():
        return run_coroutine_sync(async_double(3))

    assert asyncio.run(main()) == 6


def test_wrong_executor_type_fails_at_assignment():
    pf = PythonPacketFunction(double, output_keys="y")
    with pytest.raises(ExecutorTypeError, match="OtherExecutor.*'python'"):
        pf.executor = OtherExecutor()
    assert isinstance(pf.executor, LocalPythonFunctionExecutor)  # unchanged
    with pytest.raises(ExecutorTypeError):
        PythonPacketFunction(double, output_keys="y", executor=OtherExecutor())
    with pytest.raises(ExecutorTypeError):
        function_pod(output_keys="y", executor=OtherExecutor())(double)
    with pytest.raises(ExecutorTypeError, match="str"):
        pf.executor = "local"  # type: ignore[assignment]
    pf.executor = None  # back to the default
    assert pf.executor == LocalPythonFunctionExecutor()


def test_executor_check_is_cached_per_class_pair():
    calls = []

    @dataclasses.dataclass(frozen=True)
    class Watched(LocalPythonFunctionExecutor):
        @classmethod
        def supports(cls, function_type):
            calls.append(function_type)
            return super().supports(function_type)

    pf = PythonPacketFunction(double, output_keys="y")
    pf.executor = Watched()
    pf.executor = Watched(max_workers=2)
    PythonPacketFunction(double, output_keys="y").executor = Watched()
    assert calls == ["python"]
    assert executors.base._SUPPORT_CACHE[(PythonPacketFunction, Watched)] is True


def test_executor_is_used_and_not_part_of_identity():
    ex = CountingExecutor()
    plain = PythonPacketFunction(double, output_keys="y")
    counted = PythonPacketFunction(double, output_keys="y", executor=ex)
    assert plain.identity_hash() == counted.identity_hash()
    assert plain.uri == counted.uri
    threaded = PythonPacketFunction(double, output_keys="y", executor=LocalPythonFunctionExecutor(max_workers=4))
    assert threaded.identity_hash() == plain.identity_hash()

    src = DictSource({"id": [1, 2, 3], "x": [1, 1, 2]}, tag_columns="id")
    out = FunctionPod(counted)(src)
    assert out.content_hash() == FunctionPod(plain)(src).content_hash()
    assert out.as_table().column("y").to_pylist() == [2, 2, 4]
    assert ex.batches == [2]  # one batch of the two distinct packets
    assert counted.get_execution_data()["executor_type"] == "counting"


def test_packet_args_is_a_sequence_of_keyword_mappings_that_pickles():
    import pickle

    from orcapod_core.packet_args import PacketArgs

    args = PacketArgs(("x", "y"), ([1, 2, 3], ["a", "b", "c"]), positional=True)
    assert len(args) == 3 and args[-1] == {"x": 3, "y": "c"}
    assert list(args) == [{"x": 1, "y": "a"}, {"x": 2, "y": "b"}, {"x": 3, "y": "c"}]
    assert args[1:] == [{"x": 2, "y": "b"}, {"x": 3, "y": "c"}] and args[1:].positional
    assert list(args.arguments()) == [(1, "a"), (2, "b"), (3, "c")]
    back = pickle.loads(pickle.dumps(args))
    assert back == args and back.positional and back.names == ("x", "y")
    assert list(PacketArgs((), (), 2)) == [{}, {}] and list(PacketArgs((), (), 2).arguments()) == [(), ()]
    with pytest.raises(IndexError):
        args[3]
    with pytest.raises(ValueError, match="2 names for 1 columns"):
        PacketArgs(("x", "y"), ([1],))


def subtract(b: int, a: int, *, scale: int = 1) -> int:
    return (b - a) * scale


def defaulted(x: int, offset: int = 100, *, scale: int = 1) -> int:
    return (x + offset) * scale


@pytest.mark.parametrize("max_workers", [1, 2])
def test_calls_bind_each_column_to_its_parameter_in_any_column_order(max_workers):
    # Columns in another order than the parameters, a keyword-only parameter, a missing
    # optional one: every call still gets each packet's values by name (positional calls only
    # where the columns are the function's leading parameters).
    import pyarrow as pa

    executor = LocalPythonFunctionExecutor(max_workers=max_workers)
    pf = PythonPacketFunction(subtract, output_keys="d", executor=executor)
    table = pa.table({"scale": [2, 3], "a": [1, 10], "b": [5, 40]})
    assert pf.call_batch(table).table.column("d").to_pylist() == [8, 90]
    assert not pf._kwargs_list(table).positional  # scale is keyword-only
    assert pf._kwargs_list(table.drop_columns(["scale"])).positional  # b, a: the leading parameters
    assert pf.call_batch(table.drop_columns(["scale"])).table.column("d").to_pylist() == [4, 30]
    pf = PythonPacketFunction(defaulted, output_keys="y", executor=executor)
    only_scale = pa.table({"scale": [2, 3], "x": [1, 2]})
    assert not pf._kwargs_list(only_scale).positional  # offset is missing in between
    assert pf.call_batch(only_scale).table.column("y").to_pylist() == [202, 306]
    # captured calls go through a keywords-only wrapper
    result = PythonPacketFunction(subtract, output_keys="d").call_batch(table, capture=True)
    assert result.table.column("d").to_pylist() == [8, 90] and len(result.captured) == 2


def test_a_decorated_function_taking_keywords_only_is_called_with_keywords():
    import functools

    import pyarrow as pa

    def keywords_only(f):
        @functools.wraps(f)  # the signature shown is f's, the wrapper accepts keywords only
        def wrapper(**kwargs):
            return f(**kwargs)

        return wrapper

    @keywords_only
    def add(x: int, y: int) -> int:
        return x + y

    pf = PythonPacketFunction(add, output_keys="z")
    table = pa.table({"x": [1, 2], "y": [10, 20]})
    assert not pf._kwargs_list(table).positional
    assert pf.call_batch(table).table.column("z").to_pylist() == [11, 22]
