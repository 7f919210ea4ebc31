"""`SafeCheckpointIO`: checkpoints written atomically and read without unpickling code.

* Saving writes a temporary file next to the target (``.last.ckpt.partial-<host>-<pid>``), flushes it to disk,
  then renames it over the target (``os.replace``, atomic on POSIX). A full disk, a quota or a kill in the
  middle of a save leaves the previous ``last.ckpt`` untouched; a failed write removes its temporary file, and
  the temporary files of processes killed while saving are removed by the next save into that folder
  (`fskd.data.atomic.remove_stale_partials`: same host, process gone). (Lightning's own writer stages the
  file in the system temporary folder and moves it: a copy over the target when that folder is on another
  device.)
* Loading (``fit --ckpt_path``, ``validate --ckpt_path`` ...) always uses ``torch.load(weights_only=True)``:
  a checkpoint holding pickled code is refused with a clear error and nothing in it runs. fskd checkpoints
  hold only tensors and plain values, so they never need more (``--weights_only false`` is ignored).

`fskd.commands.lightning.FskdCLI` installs it unless the trainer's plugins already name a CheckpointIO.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from fskd.models.loading import atomic_torch_save, safe_torch_load

log = logging.getLogger(__name__)


def _is_local(path: str | os.PathLike) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def _local(path: str | os.PathLike) -> Path:
    return Path(str(path).removeprefix("file://"))


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO with atomic local saves and weights-only loads (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: str | os.PathLike,
                        map_location: Callable | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if weights_only is False:
            log.warning("%s: loading weights-only although weights_only=False was asked; fskd checkpoints "
                        "never need to unpickle code", path)
        if not _is_local(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        if not _local(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return safe_torch_load(_local(path), map_location=map_location)
