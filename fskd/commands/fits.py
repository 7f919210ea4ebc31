"""Fits that commands run for the user (``fskd demo``, ``fskd realfaces``): each in its own folder, recorded with
its exact arguments so that a later run reuses it, and never mixed with a different earlier fit."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

FIT_MARKER = "fit_done.json"
"""Written into a fit's folder once it has finished: the argument list it ran with."""


def fit_is_done(folder: Path, args: Sequence[str]) -> bool:
    """A finished fit with exactly these arguments is in ``folder`` (its marker and its ``last.ckpt``)."""
    marker = folder / FIT_MARKER
    return (marker.is_file() and (folder / "checkpoints" / "last.ckpt").is_file()
            and json.loads(marker.read_text()).get("args") == list(args))


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
