"""Fits that commands run for the user (``fskd demo``, ``fskd grid``, ``fskd realfaces``): each in its own folder,
recorded with its exact arguments so that a later run reuses it, and never mixed with a different earlier fit;
and the options those commands share (``--workers``, ``--threads``, ``--synth``)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

FIT_MARKER = "fit_done.json"
"""Written into a fit's folder once it has finished: the argument list it ran with."""


def fit_is_done(folder: Path, args: Sequence[str]) -> bool:
    """A finished fit with these arguments is in ``folder`` (its marker and its ``last.ckpt``). Arguments are
    compared by what they mean (`comparable_args`), so the same fit named from another place (the package's
    configs in another environment, ``--out`` given as an absolute path) is still found."""
    marker = folder / FIT_MARKER
    if not (marker.is_file() and (folder / "checkpoints" / "last.ckpt").is_file()):
        return False
    recorded = json.loads(marker.read_text()).get("args")
    return isinstance(recorded, list) and comparable_args(recorded) == comparable_args(args)


def comparable_args(args: Sequence[str]) -> list[str]:
    """``args`` with the values that name one thing in several ways written one way: a ``--config`` file as the
    SHA-256 of its content (the package's own configs move with the environment: before, a reinstalled or moved
    package made every finished fit look different, and each was set aside and trained again); any other
    existing path, also inside a JSON value, as its real absolute path."""
    comparable, previous = [], None
    for arg in args:
        if previous == "--config" and Path(arg).is_file():
            comparable.append("config sha256:" + hashlib.sha256(Path(arg).read_bytes()).hexdigest())
        elif arg[:1] and arg[:1] in "[{":
            try:
                comparable.append(json.dumps(_real_paths(json.loads(arg)), sort_keys=True))
            except ValueError:
                comparable.append(arg)
        else:
            comparable.append(_real_paths(arg))
        previous = arg
    return comparable


def _real_paths(value: Any) -> Any:
    if isinstance(value, str):
        return os.path.realpath(value) if value and os.path.exists(value) else value
    if isinstance(value, list):
        return [_real_paths(item) for item in value]
    if isinstance(value, dict):
        return {key: _real_paths(item) for key, item in value.items()}
    return value


def set_aside(folder: Path) -> Path:
    """Rename an earlier fit's folder to ``<name>.replaced-<n>`` (nothing is deleted), so that a new fit cannot
    pick up its checkpoints (Lightning would write ``last-v1.ckpt`` beside the old ``last.ckpt``)."""
    number = 1
    while (target := folder.with_name(f"{folder.name}.replaced-{number}")).exists():
        number += 1
    folder.rename(target)
    return target


def record_fit(folder: Path, args: Sequence[str]) -> None:
    """Mark the fit in ``folder`` as finished with ``args``; it must have written ``checkpoints/last.ckpt``."""
    checkpoint = folder / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: the fit wrote no last.ckpt")
    (folder / FIT_MARKER).write_text(json.dumps({"args": list(args)}, indent=1) + "\n")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """``--workers``, ``--threads`` and ``--synth`` of the commands that render synthetic faces and train on them."""
    parser.add_argument("--workers", type=int, default=0,
                        help="extra processes for rendering faces and loading batches (0: all in this process)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice, all cores; on cores shared with "
                        "other jobs 1 is often several times faster)")
    parser.add_argument("--synth", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override SynthConfig defaults (generator calibration), e.g. fine_amplitude=1.5")


def apply_run_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """Check the options of `add_run_options` (a bad one exits through ``parser.error``), set torch's thread
    count, and return the ``--synth`` overrides as `SynthConfig` keyword arguments."""
    if args.workers < 0:
        parser.error("--workers must be >= 0")
    try:
        synth = parse_synth_overrides(args.synth)
    except ValueError as error:
        parser.error(str(error))
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        import torch

        torch.set_num_threads(args.threads)
    return synth


def parse_synth_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> `SynthConfig` keyword arguments, typed like the field's default
    (``face_half_width_range=38,43`` for a pair). Unknown keys and unparsable values raise ValueError."""
    from fskd.data.synthetic import SynthConfig

    defaults = {f.name: f.default for f in fields(SynthConfig)}
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in defaults:
            raise ValueError(f"--synth {item!r}: expected KEY=VALUE with KEY one of {sorted(defaults)}")
        default = defaults[key]
        try:
            if isinstance(default, tuple):
                parts = text.split(",")
                if len(parts) != len(default):
                    raise ValueError(f"{len(default)} comma-separated values expected")
                overrides[key] = tuple(type(d)(v) for d, v in zip(default, parts, strict=True))
            else:
                overrides[key] = type(default)(text)
        except ValueError as error:
            raise ValueError(f"--synth {item!r}: {error}") from None
    return overrides
