"""Sizes of ``fskd realfaces`` (plain data, cheap to import for ``--help``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RECIPE = Path(__file__).resolve().parent / "configs" / "recipe.yaml"


@dataclass(frozen=True)
class Preset:
    """``folds`` of the 5-fold split that run; ``grid`` = (learning rate, CosFace margin) pairs tried on
    validation people, each trained for ``max_steps`` with checkpoints at ``step_choices``."""

    name: str
    folds: tuple[int, ...]
    seeds: tuple[int, ...]
    max_steps: int
    step_choices: tuple[int, ...]
    grid: tuple[tuple[float, float], ...]
    resolutions: tuple[int, ...]
    description: str


PRESETS: dict[str, Preset] = {
    "smoke": Preset("smoke", folds=(0,), seeds=(0,), max_steps=4, step_choices=(4,), grid=((0.01, 0.2),),
                    resolutions=(112, 14), description="one fold, one seed, 4 steps: a pipeline check"),
    "full": Preset("full", folds=(0, 1, 2, 3, 4), seeds=(0, 1), max_steps=100, step_choices=(50, 100),
                   grid=((0.01, 0.2), (0.01, 0.35), (0.001, 0.2), (0.001, 0.35)),
                   resolutions=(112, 56, 28, 14),
                   description="5 folds x 2 seeds, recipe chosen on validation people of fold 0"),
}
