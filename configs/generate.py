"""Write every experiment config of the paper grid from one recipe, so the grid cannot drift apart.

    python configs/generate.py          # rewrite the YAML files
    python configs/generate.py --check  # exit 1 if a file differs from what this script writes

The recipe is the authors' paper-era one (fskd-method.md section 3): iResNet-50 (plain IR, GAP embedding),
CosFace s=30 m=0.25, SGD lr 0.1 momentum 0.9 Nesterov wd 5e-4, batch 256, 47,000 iterations with the learning
rate divided by 10 at 18k/28k/36k/44k, horizontal flip only, nearest/nearest degradation, evaluation on AgeDB-30,
LFW and CFP-FP at 112/56/28/14 px.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RESOLUTIONS = ("14", "28", "56", "multi")
STUDENT_METHODS = ("fskd", "askd", "fitnet", "at", "rkd")
CASIA_ROOT = "data/faces_webface_112x112"
TEACHER_CKPT = "runs/teacher/casia_ir50/checkpoints/last.ckpt"
CBAM_TEACHER_CKPT = "runs/teacher/casia_ir50_cbam/checkpoints/last.ckpt"


def _loggers(name: str) -> list[dict]:
    return [
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": name}},
        # Its own sub-folder, so the two loggers never pick different version numbers.
        {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
         "init_args": {"save_dir": "runs", "name": f"{name}/tensorboard"}},
    ]


def casia_config(name: str, system: str, model: dict, train_resolution: int | str) -> dict:
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "auto",
            "devices": 1,
            "precision": "bf16-mixed",
            "max_steps": 47000,
            "max_epochs": -1,
            # 10 validations, the last one on the final weights (all sets at all resolutions).
            "val_check_interval": 4700,
            "check_val_every_n_epoch": None,
            "log_every_n_steps": 50,
            "logger": _loggers(name),
        },
        "model": {
            "class_path": f"fskd.systems.{system}",
            "init_args": {
                "backbone": "iresnet50", "mode": "ir", "neck": "gap", "embedding_size": 512,
                "head": "cosface", "head_kwargs": {"s": 30.0, "m": 0.25},
                "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5.0e-4,
                "milestones": [18000, 28000, 36000, 44000], "gamma": 0.1,
                **model,
            },
        },
        "data": {
            "root": CASIA_ROOT,
            "batch_size": 256,
            "num_workers": 8,
            "train_resolution": train_resolution,
            "train_interpolation": "nearest",
            "val_sets": ["agedb_30", "lfw", "cfp_fp"],
            "val_resolutions": [112, 56, 28, 14],
            "val_interpolation": "nearest",
        },
        "checkpoint": {"dirpath": f"runs/{name}/checkpoints", "save_last": True, "every_n_train_steps": 2000},
    }


def cpu_trainer(max_steps: int, val_check_interval: int, log_every_n_steps: int, logger: list,
                sanity_val_steps: int | None = None) -> dict:
    """Trainer section of the CPU-sized configs (bf16, one device, step-based)."""
    trainer = {
        "accelerator": "cpu",
        "devices": 1,
        "precision": "bf16-mixed",
        "max_steps": max_steps,
        "max_epochs": -1,
        "val_check_interval": val_check_interval,
        "check_val_every_n_epoch": None,
    }
    if sanity_val_steps is not None:
        trainer["num_sanity_val_steps"] = sanity_val_steps
    return {**trainer, "log_every_n_steps": log_every_n_steps, "logger": logger}


def cpu_model(system: str, width: float, max_steps: int, model: dict) -> dict:
    """Model section of the CPU-sized configs: iResNet-18 at ``width``, CosFace, the authors' SGD, two decays."""
    return {
        "class_path": f"fskd.systems.{system}",
        "init_args": {
            "backbone": "iresnet18", "mode": "ir", "neck": "gap", "width": width, "embedding_size": 128,
            "head": "cosface", "head_kwargs": {"s": 30.0, "m": 0.25},
            "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5.0e-4,
            "milestones": [int(max_steps * 0.6), int(max_steps * 0.85)], "gamma": 0.1,
            **model,
        },
    }


def tiny_config(name: str, system: str, model: dict, train_resolution: int | str, max_steps: int) -> dict:
    """CPU-sized version on the synthetic faces of ``fskd synth --out data/synth``."""
    return {
        "seed_everything": 0,
        "trainer": cpu_trainer(max_steps, max_steps // 2, 5, _loggers(name)),
        "model": cpu_model(system, 0.25, max_steps, model),
        "data": {
            "root": "data/synth",
            "batch_size": 64,
            "num_workers": 2,
            "train_resolution": train_resolution,
            "train_interpolation": "nearest",
            "val_resolutions": [112, 14],
            "val_interpolation": "nearest",
            "val_batch_size": 100,
        },
        "checkpoint": {"dirpath": f"runs/{name}/checkpoints", "save_last": True},
    }


# `fskd demo` presets (fskd/demo.py generates the data and overrides the paths; these files also run alone
# after `fskd synth --out data/demo/<preset> ...`). Sized for a 2-core CPU: iResNet-18 at 1/8 width, 112x112.
DEMO_PRESETS: dict[str, dict] = {
    "quick": {"max_steps": 200, "width": 0.125, "batch_size": 64},
    "full": {"max_steps": 1500, "width": 0.125, "batch_size": 64},
}
DEMO_ROLES = ("teacher", "baseline_14", "fskd_14")


def demo_config(preset: str, role: str) -> dict:
    """The demo's teacher (HR), no-distillation 14 px student, or F-SKD 14 px student of one preset."""
    settings = DEMO_PRESETS[preset]
    steps = settings["max_steps"]
    name = f"demo/{preset}_{role}"
    teacher_ckpt = f"runs/demo/{preset}_teacher/checkpoints/last.ckpt"
    system, model, train_resolution = {
        "teacher": ("TeacherModule", {}, 112),
        "baseline_14": ("TeacherModule", {}, 14),
        "fskd_14": ("DistillModule", {"distill": "fskd", "teacher_ckpt": teacher_ckpt}, 14),
    }[role]
    return {
        "seed_everything": 0,
        # One validation, on the final weights (`fskd demo` skips it and runs `validate` on last.ckpt).
        "trainer": cpu_trainer(steps, steps, 10, [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                                   "init_args": {"save_dir": "runs", "name": name}}],
                               sanity_val_steps=0),
        "model": cpu_model(system, settings["width"], steps, model),
        "data": {
            "root": f"data/demo/{preset}",
            "batch_size": settings["batch_size"],
            "num_workers": 0,
            "train_resolution": train_resolution,
            "train_interpolation": "nearest",
            "val_sets": ["agedb_30", "lfw", "cfp_fp"],
            "val_resolutions": [112, 56, 28, 14],
            "val_interpolation": "nearest",
            "val_batch_size": 200,
        },
        "checkpoint": {"dirpath": f"runs/{name}/checkpoints", "save_last": True},
    }


def student_model(method: str) -> dict:
    model = {"distill": method, "teacher_ckpt": TEACHER_CKPT}
    if method == "askd":
        # A-SKD distils CBAM attention maps: CBAM teacher and student.
        model.update(mode="cbam", teacher_ckpt=CBAM_TEACHER_CKPT)
    return model


def all_configs() -> dict[str, dict]:
    configs: dict[str, dict] = {}
    configs["teacher/casia_ir50.yaml"] = casia_config("teacher/casia_ir50", "TeacherModule", {}, 112)
    configs["teacher/casia_ir50_cbam.yaml"] = casia_config("teacher/casia_ir50_cbam", "TeacherModule",
                                                           {"mode": "cbam"}, 112)
    for resolution in RESOLUTIONS:
        name = f"baseline/casia_ir50_{resolution}"
        configs[f"{name}.yaml"] = casia_config(name, "TeacherModule", {}, _policy(resolution))
        for method in STUDENT_METHODS:
            name = f"student/casia_ir50_{method}_{resolution}"
            configs[f"{name}.yaml"] = casia_config(name, "DistillModule", student_model(method), _policy(resolution))
    configs["synthetic/teacher_tiny.yaml"] = tiny_config("synthetic/teacher_tiny", "TeacherModule", {}, 112, 300)
    configs["synthetic/baseline_tiny_14.yaml"] = tiny_config("synthetic/baseline_tiny_14", "TeacherModule", {},
                                                             14, 300)
    configs["synthetic/student_tiny_fskd_14.yaml"] = tiny_config(
        "synthetic/student_tiny_fskd_14", "DistillModule",
        {"distill": "fskd", "teacher_ckpt": "runs/synthetic/teacher_tiny/checkpoints/last.ckpt"}, 14, 300)
    for preset in DEMO_PRESETS:
        for role in DEMO_ROLES:
            configs[f"demo/{preset}_{role}.yaml"] = demo_config(preset, role)
    return configs


def _policy(resolution: str) -> int | str:
    return int(resolution) if resolution.isdigit() else resolution


def render(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=110)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for relative, config in all_configs().items():
        path = HERE / relative
        text = "# Generated by configs/generate.py; edit the recipe there.\n" + render(config)
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(relative)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if stale:
        print("stale configs (run python configs/generate.py):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
