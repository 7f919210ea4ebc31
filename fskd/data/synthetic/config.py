"""The generator's difficulty knobs (`SynthConfig`) and the coarse-look choices they select from."""

from __future__ import annotations

from dataclasses import dataclass

# Palettes, ordered so that a palette of size n uses the first n entries (the middle tones first).
SKIN_PALETTE: tuple[tuple[int, int, int], ...] = (
    (214, 166, 132), (190, 138, 102), (234, 196, 168), (158, 108, 76), (246, 214, 190), (112, 76, 52),
)
HAIR_PALETTE: tuple[tuple[int, int, int], ...] = (
    (62, 42, 30), (28, 24, 22), (104, 70, 42), (132, 64, 34), (186, 148, 92), (150, 146, 140),
)
HAIRSTYLES: tuple[str, ...] = ("crop", "fringe", "side_part", "long", "receding", "bald")


@dataclass(frozen=True)
class SynthConfig:
    """Difficulty knobs of the generator; geometry in pixels of the 112-pixel template.

    How the defaults were calibrated, and the measured runs: ``docs/synthetic-faces.md`` (Calibration).
    """

    image_size: int = 112
    render_scale: int = 2
    """Faces are drawn at this multiple of ``image_size`` and box-downsampled (antialiasing small cues)."""
    skin_palette_size: int = 2
    hair_palette_size: int = 2
    hairstyle_count: int = 4
    """Hairstyles used, the first n of `HAIRSTYLES`."""
    face_half_width_range: tuple[float, float] = (39.0, 42.0)
    face_half_height_range: tuple[float, float] = (49.0, 52.0)
    mid_amplitude: float = 1.0
    """Scale of the mid-band deviations from the template (inter-ocular distance +-3 px at 1.0)."""
    fine_amplitude: float = 1.0
    """Contrast of moles, wrinkles and the band-pass skin texture (0 removes them)."""
    nuisance_strength: float = 1.0
    """Scale of geometric jitter, lighting, colour cast and noise (0 gives clean, centred renders)."""
    colour_cast_sigma: float = 0.08
    glasses_prob: float = 0.15
    smile_prob: float = 0.3
    open_mouth_prob: float = 0.15
    blink_prob: float = 0.1
    jpeg_quality_range: tuple[int, int] = (70, 95)

    def __post_init__(self) -> None:
        if self.image_size < 28:
            raise ValueError(f"image_size must be >= 28, got {self.image_size}")
        if self.render_scale < 1:
            raise ValueError(f"render_scale must be >= 1, got {self.render_scale}")
        for name, palette in (("skin_palette_size", SKIN_PALETTE), ("hair_palette_size", HAIR_PALETTE),
                              ("hairstyle_count", HAIRSTYLES)):
            value = getattr(self, name)
            if not 1 <= value <= len(palette):
                raise ValueError(f"{name} must be in 1..{len(palette)}, got {value}")
        for name in ("face_half_width_range", "face_half_height_range"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {(low, high)}")
        for name in ("mid_amplitude", "fine_amplitude", "nuisance_strength", "colour_cast_sigma"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("glasses_prob", "smile_prob", "open_mouth_prob", "blink_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.smile_prob + self.open_mouth_prob > 1:
            raise ValueError("smile_prob + open_mouth_prob must be <= 1 (the mouth has one expression)")
        low, high = self.jpeg_quality_range
        if not 1 <= low <= high <= 100:
            raise ValueError(f"jpeg_quality_range must satisfy 1 <= low <= high <= 100, got {(low, high)}")
