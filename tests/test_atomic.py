"""The one atomic writer of checkpoints and positives files (`fskd.data.atomic`)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fskd.data.atomic import atomic_write


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "table.npz"
    target.write_bytes(b"old")

    def write(stream) -> None:
        stream.write(b"half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(OSError, match=r"table\.npz: could not write the positives file \(disk full\); fix it"):
        atomic_write(target, write, "positives file", "fix it")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["table.npz"]
    assert atomic_write(target, lambda stream: stream.write(b"new")) == target and target.read_bytes() == b"new"


def test_any_write_removes_the_temporaries_of_dead_writers_of_this_host(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    host = socket.gethostname()
    stale = tmp_path / f".positives.npz.partial-{host}-{pid}"  # a killed mining run
    other_host = tmp_path / f".last.ckpt.partial-elsewhere.example-{pid}"
    stale.write_bytes(b"x")
    other_host.write_bytes(b"x")
    atomic_write(tmp_path / "last.ckpt", lambda stream: stream.write(b"checkpoint"), "checkpoint")
    assert not stale.exists() and other_host.exists()
