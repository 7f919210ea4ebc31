"""Shared helpers of the benchmark scripts: arguments, interleaved timing, machine description, tables, JSON.

The benchmarks run on shared machines (the development box has 2 cores used by other jobs too), so absolute
numbers move from run to run. Every script therefore times its candidate and its reference in alternating
rounds within the same process and reports the median of the per-round ratios, which is what should be quoted;
absolute numbers come with the machine they were measured on (`machine_info`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

LOAD_AT_IMPORT = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None

SIZES = ("smoke", "small", "default")
"""``smoke``: a few seconds (CI); ``small``: ~10-20 s; ``default``: a few tens of seconds on 2 CPU cores."""


def base_parser(description: str, device: bool = True) -> argparse.ArgumentParser:
    """A parser with the options the benchmarks share: ``--size``, ``--json`` (and ``--device`` if asked)."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="default", help="how long to measure")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    if device:
        parser.add_argument("--device", default="cpu", help="torch device of the batched (on-device) work")
    return parser


def resolve_device(name: str) -> torch.device:
    """The requested device; asking for CUDA without a GPU exits with a clear message, not a traceback."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine "
                         f"(torch {torch.__version__})")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for queued device work so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's answer elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """What the numbers were measured on: CPU model, visible cores, load, library versions, GPU name."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1min_start"] = LOAD_AT_IMPORT
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_line(info: dict[str, Any]) -> str:
    """One human-readable line describing `machine_info`."""
    parts = [f"CPU {info['cpu']}", f"nproc {info['nproc']}", f"torch threads {info['torch_threads']}",
             f"torch {info['torch']}"]
    if "load_average_1min" in info:
        parts.append(f"1-min load average {info.get('load_average_1min_start')} at start, "
                     f"{info['load_average_1min']} at end")
    if "gpu" in info:
        parts.append(f"GPU {info['gpu']}")
    return ", ".join(parts)


@dataclass
class Timings:
    """Seconds per round of each candidate, rounds interleaved (A B C, A B C, ...)."""

    seconds: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def ratio(self, name: str, reference: str) -> float:
        """Median over rounds of ``time(reference) / time(name)``: > 1 means ``name`` is faster."""
        pairs = zip(self.seconds[name], self.seconds[reference], strict=True)
        return statistics.median(r / n for n, r in pairs)

    def time_ratio(self, name: str, reference: str) -> float:
        """Median over rounds of ``time(name) / time(reference)``: > 1 means ``name`` takes longer."""
        pairs = zip(self.seconds[name], self.seconds[reference], strict=True)
        return statistics.median(n / r for n, r in pairs)


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                device: torch.device | None = None) -> Timings:
    """Time each zero-argument callable once per round, alternating between them (order rotated per round).

    A callable that returns a float reports its own seconds (e.g. to leave out a start-up it cannot avoid);
    otherwise the wall time of the call counts. Alternating makes a burst of load from other jobs hit every
    candidate alike, so per-round ratios are far steadier than the absolute times on a shared machine.
    ``warmup`` untimed calls per candidate come first.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    device = device or torch.device("cpu")
    for function in candidates.values():
        for _ in range(warmup):
            function()
    synchronize(device)
    timings = Timings({name: [] for name in candidates})
    names = list(candidates)
    for round_index in range(rounds):
        # Rotate the order each round so that no candidate always follows the same one.
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            function = candidates[name]
            start = time.perf_counter()
            measured = function()
            synchronize(device)
            elapsed = time.perf_counter() - start
            timings.seconds[name].append(measured if isinstance(measured, float) else elapsed)
    return timings


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; numbers are written as given (format them before)."""
    if any(len(row) != len(headers) for row in rows):
        raise ValueError("every row needs one cell per header")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


class StreamingTable:
    """A markdown table printed as it grows: the title and header at once, then each row as soon as it is
    known, flushed, so that a run stopped by a time limit (benchmarks/gpu.sh) keeps every finished row.

    What it prints is exactly ``### title``, a blank line and ``markdown_table(headers, rows)`` (`text`).
    """

    def __init__(self, title: str, headers: Sequence[str], stream: TextIO | None = None) -> None:
        self.title = title
        self.headers = list(headers)
        self.rows: list[list[object]] = []
        self.stream = stream if stream is not None else sys.stdout
        self._write(f"### {title}\n\n" + markdown_table(self.headers, []) + "\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def row(self, cells: Sequence[object]) -> None:
        """Print one row now (one cell per header)."""
        if len(cells) != len(self.headers):
            raise ValueError("every row needs one cell per header")
        self.rows.append(list(cells))
        self._write("| " + " | ".join(str(cell) for cell in cells) + " |\n")

    def text(self) -> str:
        """The table printed so far (without the title)."""
        return markdown_table(self.headers, self.rows)


def fmt(value: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits (no scientific notation for everyday magnitudes)."""
    if value == 0 or not (1 <= abs(value) < 1e7):
        return f"{value:.{digits}g}"
    return f"{value:.{max(digits - len(str(int(abs(value)))), 0)}f}"


def report(title: str, table: str | StreamingTable, info: dict[str, Any], args: argparse.Namespace,
           results: dict[str, Any], notes: Sequence[str] = ()) -> None:
    """Print the title, the table (unless it is a `StreamingTable`, already printed) and the notes; write the
    JSON file when ``--json`` was given."""
    if isinstance(table, StreamingTable):
        table = table.text()
    else:
        print(f"### {title}\n")
        print(table)
    print()
    for note in (f"Machine: {machine_line(info)}.", *notes):
        print(f"* {note}")
    sys.stdout.flush()
    if args.json is not None:
        payload = {"benchmark": title, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                   "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                   "machine": info, "results": results, "table": table}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n")


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """``torch.autocast`` for ``precision`` (``bf16``, ``fp16`` or ``fp32`` = disabled) on ``device``."""
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if precision not in dtypes:
        raise ValueError(f"precision {precision!r}: expected one of {sorted(dtypes)}")
    return torch.autocast(device.type, dtype=dtypes[precision], enabled=precision != "fp32")
