"""``python -m example_project [STORE]``: run the pipeline against a Delta store and print
per-node computed/cached counts and the final tables. Running it twice shows everything cached."""

from __future__ import annotations

import sys

from example_project.pipeline import build_pipeline
from orcapod_core import ProgressObserver


def main(argv: list[str]) -> None:
    store = argv[1] if len(argv) > 1 else None
    pipeline = build_pipeline(store)
    result = pipeline.run(observer=ProgressObserver(sys.stdout, every_s=5.0))
    print()
    print(pipeline.scored.as_polars().head(8))
    print(pipeline.network_summary.as_polars())
    print(f"\n{result.computed} rows computed, {result.cached} served from the store, {result.failed} failed")


if __name__ == "__main__":
    main(sys.argv)
