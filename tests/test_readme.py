"""README.md's examples are executable documentation: this test runs them.

Rules for README authors:

* Every fenced ```python block runs, in order, in ONE shared namespace, with the working
  directory set to a fresh temp dir. A block whose first line is ``# not-run`` is skipped.
* Shown output is checked. ``expr  # -> text`` — or ``# -> text`` on the line right after a
  top-level expression statement, optionally continued on following ``#   more`` lines (hash
  + at least three spaces; pieces are joined with one space) — asserts that ``repr(expr)``
  equals ``text``, where ``...`` matches any run of characters. A ``# ->`` comment anywhere
  else fails the test, so no output shown in the README goes unchecked.

Blocks are compiled with README.md itself as the file name and their real line numbers, so
tracebacks point at README lines and ``inspect.getsource`` (used by function identity) reads
the function's source straight from the README.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SKIP_MARKER = "# not-run"
OUTPUT = "# -> "
CONTINUATION = re.compile(r"^#\s{3,}(\S.*)$")


@dataclass
class Block:
    index: int  # 1-based position among the README's python blocks
    first_line: int  # README line number of the block's first code line
    code: str

    def where(self, line: int | None = None) -> str:
        at = f"line {line}" if line is not None else f"starting at line {self.first_line}"
        return f"README.md python block #{self.index} ({at})"


def python_blocks(text: str) -> list[Block]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = lines[i].strip()
        if fence.startswith("```py") and fence != "```python":
            raise AssertionError(f"README.md line {i + 1}: use ```python for Python blocks (got {fence!r})")
        if fence == "```python":
            start = i + 1
            end = start
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            if end == len(lines):
                raise AssertionError(f"README.md: python block opened at line {i + 1} is never closed")
            blocks.append(Block(len(blocks) + 1, start + 1, "\n".join(lines[start:end]) + "\n"))
            i = end
        i += 1
    return blocks


def expected_outputs(block: Block) -> dict[int, tuple[str, int]]:
    """``{README line of the # -> comment: (expected text, README line it is attached to)}``.

    Same-line comments attach to their own line; a comment alone on a line attaches to the
    line above it.
    """
    source_lines = block.code.splitlines()
    out: dict[int, tuple[str, int]] = {}
    tokens = tokenize.generate_tokens(io.StringIO(block.code).readline)
    for tok in tokens:
        if tok.type != tokenize.COMMENT or not tok.string.startswith(OUTPUT):
            continue
        row = tok.start[0]  # 1-based within the block
        text = tok.string[len(OUTPUT):].strip()
        own_line = source_lines[row - 1].lstrip().startswith("#")
        nxt = row
        while own_line and nxt < len(source_lines):
            m = CONTINUATION.match(source_lines[nxt].strip())
            if not m:
                break
            text += " " + m.group(1).strip()
            nxt += 1
        readme_row = block.first_line + row - 1
        out[readme_row] = (text, readme_row - 1 if own_line else readme_row)
    return out


def matches(expected: str, actual: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, actual, flags=re.DOTALL) is not None


def run_block(block: Block, namespace: dict) -> None:
    # Pad with blank lines so compiled line numbers are README line numbers.
    padded = "\n" * (block.first_line - 1) + block.code
    tree = ast.parse(padded, filename=str(README))
    outputs = expected_outputs(block)
    by_end_line = {
        stmt.end_lineno: stmt for stmt in tree.body if isinstance(stmt, ast.Expr)
    }
    checks: dict[int, tuple[str, int]] = {}  # statement start line → (expected, comment line)
    for comment_line, (expected, attached) in outputs.items():
        stmt = by_end_line.get(attached)
        if stmt is None:
            pytest.fail(
                f"{block.where(comment_line)}: '# ->' must follow a top-level expression statement "
                f"(on its line or the line right below it)",
                pytrace=False,
            )
        checks[stmt.lineno] = (expected, comment_line)

    for stmt in tree.body:
        try:
            if stmt.lineno in checks:
                expected, comment_line = checks[stmt.lineno]
                code = compile(ast.Expression(stmt.value), str(README), "eval")
                actual = repr(eval(code, namespace))
                if not matches(expected, actual):
                    pytest.fail(
                        f"{block.where(comment_line)}: shown output does not match\n"
                        f"  shown:  {expected}\n  actual: {actual}",
                        pytrace=False,
                    )
            else:
                module = ast.Module(body=[stmt], type_ignores=[])
                exec(compile(module, str(README), "exec"), namespace)
        except Exception:
            pytest.fail(f"{block.where(stmt.lineno)} failed:\n{traceback.format_exc()}", pytrace=False)


def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no ```python blocks"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for block in blocks:
        if block.code.lstrip().startswith(SKIP_MARKER):
            continue
        run_block(block, namespace)


def test_output_comment_matching():
    assert matches("[1, ...]", "[1, 2, 3]")
    assert matches("'a::...::c'", "'a::b::c'")
    assert not matches("[1, 2]", "[1, 2, 3]")
    block = Block(1, 10, "x = 1\nx  # -> 1\nx\n# -> [1,\n#    2]\n")
    assert expected_outputs(block) == {11: ("1", 11), 13: ("[1, 2]", 12)}
