"""The demo's sizes (presets) and where its configs are: plain data, cheap to import (``fskd demo --help``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_CONFIGS = Path(__file__).resolve().parent / "configs"
"""The demo's configs, shipped inside the package: ``recipe.yaml`` plus overlays stacked on it."""

RECIPE = "recipe.yaml"


@dataclass(frozen=True)
class Preset:
    """Dataset sizes and configs of one demo size.

    ``overlays`` are config files stacked on ``recipe.yaml`` (before the model's own overlay,
    ``<model>.yaml`` when it exists); ``overrides`` are extra CLI arguments given to every fit and validate run
    (the smoke preset shrinks the quick recipe with them).
    """

    name: str
    identities: int
    images_per_identity: int
    pairs: int
    seeds: tuple[int, ...] = (0,)
    overlays: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    description: str = ""


PRESETS: dict[str, Preset] = {
    "smoke": Preset("smoke", identities=16, images_per_identity=3, pairs=20,
                    overrides=("--trainer.max_steps", "3", "--model.milestones", "[2]",
                               "--data.batch_size", "16", "--data.val_batch_size", "40",
                               "--data.val_resolutions", "[112,14]"),
                    description="test-sized pipeline check (3 steps per model); numbers are meaningless"),
    "quick": Preset("quick", identities=300, images_per_identity=6, pairs=200,
                    description="about 5 minutes on 2 CPU cores (5:02 measured); shows the pipeline, numbers "
                                "are noisy"),
    "full": Preset("full", identities=1000, images_per_identity=6, pairs=600, seeds=(0, 1, 2),
                   overlays=("full.yaml",),
                   description="the synthetic F-SKD benchmark (3 seeds took 90 minutes on 2 CPU cores, run as 3 "
                               "parallel processes with --threads 1; docs/benchmarks.md section 5)"),
}
