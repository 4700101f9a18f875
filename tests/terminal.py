"""A real pseudo-terminal for tests: run a command with its stderr on a pty and read what the
terminal received (the tests that check what a person sees in a terminal)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
HIDE_CURSOR = "\x1b[?25l"  # a live display hides the cursor while it redraws


def run_with_terminal_stderr(args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 120, columns: int = 120) -> tuple[str, str]:
    """Run ``args`` with stderr on a new pseudo-terminal of ``columns`` columns and stdout on a
    pipe; → (what the terminal received, escape codes included; stdout). The process is the
    one this starts, killed by its handle if it outlives ``timeout``; it must exit with 0."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env, cwd=cwd)
    os.close(slave)
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed its end (Linux: EIO)
                    break
                if not data:
                    break
                received += data
            elif proc.poll() is not None:
                break
        out, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    shown = received.decode(errors="replace")
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{plain(shown)}"
    return shown, out.decode()


def plain(text: str) -> str:
    """``text`` without escape codes and carriage returns."""
    return ANSI.sub("", text).replace("\r", "")
