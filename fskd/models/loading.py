"""Safe loading of trained networks from system checkpoints (weights only: a checkpoint cannot run code).

Plain PyTorch: `load_backbone` gives an eval-mode `IResNet` without importing Lightning, so identification,
export and any user script can use a trained model without the training stack.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from fskd.data.atomic import atomic_write
from fskd.models.heads import ClassificationHead, create_head
from fskd.models.iresnet import IResNet, create_backbone

#: Hyper-parameters that define a backbone's architecture (as saved by `FaceRecognitionModule`).
ARCHITECTURE_KEYS = ("backbone", "mode", "neck", "width", "embedding_size", "dropout")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through `fskd.data.atomic.atomic_write`: a temporary file in the target's folder
    (``.<name>.partial-<host>-<pid>``), fsync, then a rename over ``path``; temporary files left in the folder by
    killed writers of this host are deleted first (`remove_stale_partials`)."""
    atomic_write(str(path).removeprefix("file://"), lambda stream: torch.save(obj, stream), "checkpoint")


def load_error(path: str | os.PathLike, error: BaseException) -> ValueError:
    """The error for a checkpoint file that ``torch.load(weights_only=True)`` rejected, naming the file."""
    first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, pickle.UnpicklingError):
        return ValueError(f"{path}: refused to load: weights-only loading rejects pickled code or unknown "
                          f"objects ({first_line})")
    return ValueError(f"{path}: not a readable checkpoint ({first_line})")


def safe_torch_load(path: str | os.PathLike, map_location: Any = None) -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file and say why it was refused."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise load_error(path, error) from None


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a Lightning checkpoint with ``weights_only=True``; clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        checkpoint = safe_torch_load(path, map_location="cpu")
    except OSError as error:  # e.g. unreadable: named like every other refusal
        raise load_error(path, error) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise ValueError(f"{path}: not an fskd system checkpoint (no state_dict/hyper_parameters)")
    return checkpoint


def architecture(checkpoint: dict[str, Any], path: str | os.PathLike = "checkpoint") -> dict[str, Any]:
    hparams = checkpoint["hyper_parameters"]
    missing = [k for k in ARCHITECTURE_KEYS if k not in hparams]
    if missing:
        raise ValueError(f"{path}: hyper-parameters lack {missing}; not a FaceRecognitionModule checkpoint")
    return {k: hparams[k] for k in ARCHITECTURE_KEYS}


def backbone_from_architecture(architecture: dict[str, Any]) -> torch.nn.Module:
    """A freshly initialised backbone described by `ARCHITECTURE_KEYS` (as checkpoints and importers hold them)."""
    return create_backbone(architecture["backbone"], **{k: v for k, v in architecture.items() if k != "backbone"})


def _sub_state(checkpoint: dict[str, Any], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}


def _load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike,
               what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: the {what} weights do not fit the architecture in its hyper-parameters: "
                         f"{str(error).splitlines()[0]}") from None


#: Hyper-parameters only a distillation student (`fskd.systems.DistillModule`) has.
STUDENT_KEYS = ("teacher_ckpt", "distill")


def is_student(checkpoint: dict[str, Any]) -> bool:
    """Whether a system checkpoint's hyper-parameters say it is a distillation student (a DistillModule)."""
    hparams = checkpoint.get("hyper_parameters") or {}
    return (str(hparams.get("_class_path", "")).rsplit(".", 1)[-1] == "DistillModule"
            or all(key in hparams for key in STUDENT_KEYS))


def load_backbone(path: str | os.PathLike, prefix: str = "backbone.",
                  expected: dict[str, Any] | None = None, allow_student: bool = False) -> IResNet:
    """Build the backbone described by a checkpoint's hyper-parameters and load its weights (eval mode).

    ``expected`` (a subset of `ARCHITECTURE_KEYS`) must match the checkpoint, else a ValueError lists the
    differences; use it to refuse a teacher of the wrong architecture before any training starts.

    A distillation student's checkpoint (`is_student`) is refused unless ``allow_student``: this is how a
    teacher is loaded (``--model.teacher_ckpt``), and a student given there is almost always a mix-up of two
    runs' files. Evaluating or exporting a student passes ``allow_student=True``.
    """
    checkpoint = read_checkpoint(path)
    if not allow_student and is_student(checkpoint):
        teacher = (checkpoint["hyper_parameters"].get("teacher_ckpt") or "?")
        raise ValueError(f"{path}: a distillation student's checkpoint (DistillModule, distilled from {teacher}), "
                         "not a teacher; pass the teacher's own checkpoint, or --model.allow_student_teacher true "
                         "(load_backbone(..., allow_student=True)) to use a student on purpose")
    arch = architecture(checkpoint, path)
    if expected:
        different = {k: (arch.get(k), v) for k, v in expected.items() if arch.get(k) != v}
        if different:
            details = ", ".join(f"{k}: checkpoint {a!r} != expected {b!r}" for k, (a, b) in different.items())
            raise ValueError(f"{path}: architecture mismatch ({details})")
    backbone = backbone_from_architecture(arch)
    state = _sub_state(checkpoint, prefix)
    if not state:
        raise ValueError(f"{path}: no weights under {prefix!r} in the checkpoint")
    _load_into(backbone, state, path, "backbone")
    return backbone.eval()


def load_head(path: str | os.PathLike) -> ClassificationHead:
    """The margin head of a checkpoint (used for logit distillation)."""
    checkpoint = read_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    head = create_head(hparams.get("head", "cosface"), hparams["embedding_size"], hparams["num_classes"],
                       **(hparams.get("head_kwargs") or {}))
    _load_into(head, _sub_state(checkpoint, "head."), path, "head")
    return head.eval()


IMPORT_KEY = "fskd_import"
"""Checkpoint key of an imported network: where it came from and how its input convention was folded in."""


def imported_checkpoint(backbone: torch.nn.Module, architecture: dict[str, Any], source: dict[str, Any],
                        head: torch.nn.Module | None = None, head_hparams: dict[str, Any] | None = None,
                        ) -> dict[str, Any]:
    """A checkpoint of a network imported from another framework, in the layout of a `TeacherModule` one.

    ``architecture`` holds `ARCHITECTURE_KEYS` (what `load_backbone` rebuilds); ``source`` records the original
    file, format and the input convention folded into the weights (stored under `IMPORT_KEY`). ``head`` (with
    ``head_hparams``: ``head``, ``num_classes``, ``head_kwargs``) is optional: without it, ``validate`` and
    ``predict`` give the system a fresh head, which only training would use. ``--model.teacher_ckpt``,
    ``--model.init_from_teacher``, ``fskd validate|predict --ckpt_path``, ``identify`` and ``export`` accept it.
    """
    from importlib.metadata import PackageNotFoundError, version

    missing = [k for k in ARCHITECTURE_KEYS if k not in architecture]
    if missing:
        raise ValueError(f"imported architecture lacks {missing}")
    state = {f"backbone.{k}": v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
    hparams: dict[str, Any] = {"_class_path": "fskd.systems.TeacherModule", **architecture}
    if head is not None:
        state.update({f"head.{k}": v.detach().cpu().clone() for k, v in head.state_dict().items()})
        hparams.update(head_hparams or {})
    try:
        lightning_version = version("lightning")
    except PackageNotFoundError:  # a plain PyTorch install; Lightning only reads this key
        lightning_version = "2.4.0"
    return {"state_dict": state, "hyper_parameters": hparams, IMPORT_KEY: dict(source),
            "epoch": 0, "global_step": 0, "pytorch-lightning_version": lightning_version}
