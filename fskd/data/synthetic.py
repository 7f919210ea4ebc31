"""Procedural synthetic identity faces, written in the insightface layout (``train.rec``/``.idx``, ``*.bin``).

No real face-recognition data can be installed here, so tests, the demo and the CPU benchmark use faces drawn
by this module and packed by the project's own writers: the code paths that read CASIA-WebFace and LFW are the
ones exercised. Design: ``docs/synthetic-faces.md``.

Each identity has parameters in three bands, chosen so that resolution matters:

* coarse (survive 14x14): face shape, skin tone and hair colour from small palettes (many identities share a
  coarse look), hairstyle and hairline;
* mid (sub-LR-pixel): inter-ocular distance, eye height and size, brows, nose, mouth, lip colour;
* fine (lost at 14x14): moles, an identity-seeded band-pass skin texture, one-pixel wrinkles, iris colour.

Each image adds nuisance: a similarity jitter (alignment error), expression (smile, open mouth, blink),
glasses, background colour, a lighting gradient, gain and colour cast, Gaussian noise and a JPEG quality.

Everything is deterministic: identity parameters come from ``SeedSequence([seed, identity])``, the image
nuisance from ``SeedSequence([seed, identity, sample, 1])`` and the pair plan of a verification set from
``SeedSequence([seed, first_id, 0, 2])``. The trailing tags are there because numpy's SeedSequence ignores
trailing zero words (``[seed, identity, 0]`` would be the identity stream itself) and keep the three kinds of
stream apart. Sensor noise is a window, chosen by the image's stream, of one fixed Gaussian bank.
Faces are drawn with PIL at ``render_scale`` times the output size and box-downsampled, so that one-pixel
cues get partial coverage instead of jagged on/off pixels. Bytes are reproducible for a given numpy, Pillow
and libjpeg; numpy does not promise identical random streams across major versions.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from fskd.data.binfile import save_bin
from fskd.data.recordio import write_face_records

TEMPLATE_SIZE = 112
"""All geometry below is in pixels of the 112x112 ArcFace template and scaled to the requested size."""

LEFT_EYE = (38.2946, 51.6963)
RIGHT_EYE = (73.5318, 51.5014)
MOUTH_Y = 92.0
FACE_CENTRE = (56.0, 58.0)

# Palettes, ordered so that a palette of size n uses the first n entries (the middle tones first).
SKIN_PALETTE: tuple[tuple[int, int, int], ...] = (
    (214, 166, 132), (190, 138, 102), (234, 196, 168), (158, 108, 76), (246, 214, 190), (112, 76, 52),
)
HAIR_PALETTE: tuple[tuple[int, int, int], ...] = (
    (62, 42, 30), (28, 24, 22), (104, 70, 42), (132, 64, 34), (186, 148, 92), (150, 146, 140),
)
IRIS_PALETTE: tuple[tuple[int, int, int], ...] = (
    (92, 58, 32), (46, 32, 22), (122, 96, 52), (78, 108, 70), (76, 108, 152), (112, 118, 124),
)
HAIRSTYLES: tuple[str, ...] = ("crop", "fringe", "side_part", "long", "receding", "bald")
GLASSES_COLOURS: tuple[tuple[int, int, int], ...] = (
    (20, 20, 20), (90, 60, 30), (150, 150, 155), (40, 40, 90),
)

VERIFICATION_SETS: tuple[str, ...] = ("agedb_30", "lfw", "cfp_fp")
VERIFICATION_ID_BASE: dict[str, int] = {
    "agedb_30": 1_000_000_000, "lfw": 2_000_000_000, "cfp_fp": 3_000_000_000,
}
"""First identity id of each verification set; training ids are 0..N-1 (N < 1e9), so all sets are disjoint."""

META_FILE = "synthetic.json"
_SAMPLE_STREAM_TAG = 1
_PLAN_STREAM_TAG = 2


@dataclass(frozen=True)
class SynthConfig:
    """Difficulty knobs of the generator; geometry in pixels of the 112-pixel template.

    Defaults are the pilot's "hard" variant (2 skin x 2 hair palettes, narrow face shapes, per-image colour
    cast sigma 8 %) translated to 112x112 HR / 14x14 LR. The pilot, at 56/7, gave teacher@HR ~ 100 %,
    teacher@LR near chance and an LR student in between.

    Calibration: on the teacher-HR vs LR spread only, never on the distillation gain (the
    benchmark's measurement); ``fskd demo --preset full --seeds 0 --models teacher baseline_14`` (iResNet-18
    at 1/8 width, 1,000 identities x 6 images, 1,500 steps of 64, bf16, 2-core CPU), mean of the three sets,
    authors' protocol:

    ============================================================  =========  ==========  =============
    generator                                                     teacher    teacher     teacher
                                                                  @112 px    @28 px      @14 px
    ============================================================  =========  ==========  =============
    these defaults                                                96.3 %     88.4 %      73.5 %
    ``fine_amplitude=1.5 mid_amplitude=1.5`` + 1 skin, 1 hair     92.1 %     88.3 %      70.1 %
    palette (fewer coarse cues)
    ============================================================  =========  ==========  =============

    The defaults were kept: the teacher is 23 points lower at 14 px than at HR (the target was at least 10)
    and 96.3 % at HR is just under the 97-99 % aimed at; the harder variant lowered HR accuracy more than
    LR. The base 14 px student of the same run is in ``docs/benchmarks.md`` (synthetic benchmark).
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


@dataclass(frozen=True)
class IdentityParams:
    """Parameters of one synthetic identity (template pixels; colours RGB)."""

    identity: int
    # coarse
    skin: tuple[int, int, int]
    hair_colour: tuple[int, int, int]
    hairstyle: str
    face_half_width: float
    face_half_height: float
    jaw_taper: float
    hairline_y: float
    hair_volume: float
    # mid
    eye_distance: float
    eye_y: float
    eye_half_width: float
    eye_half_height: float
    brow_gap: float
    brow_thickness: float
    brow_arch: float
    brow_tilt: float
    nose_tip_y: float
    nose_half_width: float
    mouth_y: float
    mouth_half_width: float
    lip_thickness: float
    lip_colour: tuple[int, int, int]
    # fine
    iris_colour: tuple[int, int, int]
    moles: tuple[tuple[float, float, float], ...]
    """(x, y, radius) of each mole."""
    wrinkles: tuple[tuple[tuple[float, float], ...], ...]
    """Polylines of one-pixel wrinkle lines."""
    texture_seed: int
    """Seed of the identity's band-pass skin texture."""


@dataclass(frozen=True)
class _Nuisance:
    angle_deg: float
    scale: float
    shift: tuple[float, float]
    expression: str
    glasses: tuple[int, int, int] | None
    background: tuple[int, int, int]
    clothes: tuple[int, int, int]
    gain: float
    gradient: tuple[float, float]
    colour_cast: tuple[float, float, float]
    noise_sigma: float
    noise_offset: int
    jpeg_quality: int


def _check_id(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> tuple[int, int, int]:
    return tuple(int(round(min(255.0, max(0.0, x + (y - x) * t)))) for x, y in zip(a, b, strict=True))


def _shade(colour: Sequence[float], factor: float) -> tuple[int, int, int]:
    return tuple(int(round(min(255.0, max(0.0, c * factor)))) for c in colour)


def identity_params(seed: int, identity: int, config: SynthConfig | None = None) -> IdentityParams:
    """The parameters of ``identity``, a pure function of ``(seed, identity, config)``."""
    _check_id("seed", seed)
    _check_id("identity", identity)
    config = config or SynthConfig()
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(identity)])))
    mid = config.mid_amplitude

    def around(centre: float, spread: float) -> float:
        return float(centre + spread * mid * rng.uniform(-1.0, 1.0))

    skin = SKIN_PALETTE[int(rng.integers(config.skin_palette_size))]
    hair = HAIR_PALETTE[int(rng.integers(config.hair_palette_size))]
    hairstyle = HAIRSTYLES[int(rng.integers(config.hairstyle_count))]
    half_width = float(rng.uniform(*config.face_half_width_range))
    half_height = float(rng.uniform(*config.face_half_height_range))
    jaw_taper = float(rng.uniform(0.08, 0.2))
    hairline_y = float(rng.uniform(20.0, 27.0))
    hair_volume = float(rng.uniform(2.5, 5.5))

    eye_distance = around(RIGHT_EYE[0] - LEFT_EYE[0], 3.0)
    eye_y = around((LEFT_EYE[1] + RIGHT_EYE[1]) / 2, 2.0)
    eye_half_width = around(6.0, 1.0)
    eye_half_height = around(2.9, 0.6)
    brow_gap = around(7.5, 1.5)
    brow_thickness = around(2.4, 0.9)
    brow_arch = around(1.5, 1.2)
    brow_tilt = around(0.0, 1.2)
    nose_tip_y = around(72.0, 3.0)
    nose_half_width = around(5.5, 1.5)
    mouth_y = around(MOUTH_Y, 2.0)
    mouth_half_width = around(11.5, 2.5)
    lip_thickness = around(3.0, 0.7)
    lip_colour = _mix(skin, (170, 58, 66), float(np.clip(0.55 + 0.15 * mid * rng.uniform(-1, 1), 0, 1)))

    iris = IRIS_PALETTE[int(rng.integers(len(IRIS_PALETTE)))]
    moles = []
    for _ in range(int(rng.integers(2, 9))):
        # Uniform inside the lower 85 % of the face ellipse, below the hairline.
        while True:
            u, v = rng.uniform(-0.85, 0.85, size=2)
            if u * u + v * v <= 0.72 and FACE_CENTRE[1] + v * half_height > 32.0:
                break
        moles.append((float(FACE_CENTRE[0] + u * half_width), float(FACE_CENTRE[1] + v * half_height),
                      float(rng.uniform(0.8, 1.6))))
    wrinkles = []
    for kind in rng.permutation(4)[: int(rng.integers(0, 4))]:
        wrinkles.append(_wrinkle(int(kind), rng, eye_distance, eye_y, eye_half_width, nose_tip_y,
                                 nose_half_width, mouth_y, mouth_half_width))
    return IdentityParams(
        identity=int(identity), skin=skin, hair_colour=hair, hairstyle=hairstyle, face_half_width=half_width,
        face_half_height=half_height, jaw_taper=jaw_taper, hairline_y=hairline_y, hair_volume=hair_volume,
        eye_distance=eye_distance, eye_y=eye_y, eye_half_width=eye_half_width,
        eye_half_height=eye_half_height, brow_gap=brow_gap, brow_thickness=brow_thickness,
        brow_arch=brow_arch, brow_tilt=brow_tilt, nose_tip_y=nose_tip_y, nose_half_width=nose_half_width,
        mouth_y=mouth_y, mouth_half_width=mouth_half_width, lip_thickness=lip_thickness,
        lip_colour=lip_colour, iris_colour=iris, moles=tuple(moles), wrinkles=tuple(wrinkles),
        texture_seed=int(rng.integers(2**63)),
    )


def _wrinkle(kind: int, rng: np.random.Generator, eye_distance: float, eye_y: float, eye_half_width: float,
             nose_tip_y: float, nose_half_width: float, mouth_y: float,
             mouth_half_width: float) -> tuple[tuple[float, float], ...]:
    """One wrinkle polyline: 0 forehead line, 1 crow's feet, 2 nasolabial fold, 3 under-eye line."""
    cx = FACE_CENTRE[0]
    jitter = rng.uniform(-1.0, 1.0, size=4)
    if kind == 0:
        y = 34.0 + 3.0 * jitter[0]
        half = 12.0 + 4.0 * jitter[1]
        return tuple((cx + x, y + 1.2 * jitter[2] * (x / half) ** 2) for x in np.linspace(-half, half, 5))
    side = 1.0 if jitter[3] >= 0 else -1.0
    if kind == 1:
        x0 = cx + side * (eye_distance / 2 + eye_half_width + 2.0)
        return ((x0, eye_y - 1.5), (x0 + side * (4.0 + jitter[0]), eye_y - 3.0 + jitter[1]))
    if kind == 2:
        start = (cx + side * (nose_half_width + 2.0), nose_tip_y - 1.0)
        end = (cx + side * (mouth_half_width + 2.5), mouth_y + 1.0 + 2.0 * jitter[0])
        middle = ((start[0] + end[0]) / 2 + side * (1.5 + jitter[1]), (start[1] + end[1]) / 2)
        return (start, middle, end)
    x0 = cx + side * (eye_distance / 2)
    return tuple((x0 + x, eye_y + 4.5 + 0.8 * jitter[0] + 0.04 * x * x) for x in np.linspace(-4.0, 4.0, 4))


def _sample_nuisance(seed: int, identity: int, sample: int, config: SynthConfig) -> _Nuisance:
    """The per-image nuisance, from the sample's own random stream (one batch of uniforms, for speed)."""
    rng = np.random.Generator(np.random.PCG64(
        np.random.SeedSequence([int(seed), int(identity), int(sample), _SAMPLE_STREAM_TAG])))
    u = rng.random(20)
    normals = rng.standard_normal(3)
    strength = config.nuisance_strength
    if u[4] < config.smile_prob:
        expression = "smile"
    elif u[4] < config.smile_prob + config.open_mouth_prob:
        expression = "open"
    else:
        expression = "neutral"
    if u[5] < config.blink_prob:
        expression += "+blink"
    glasses = GLASSES_COLOURS[int(u[7] * len(GLASSES_COLOURS))] if u[6] < config.glasses_prob else None
    direction = 2.0 * math.pi * u[15]
    amplitude = strength * 0.25 * u[16]
    cast = np.clip(1.0 + strength * config.colour_cast_sigma * normals, 0.5, 1.5)
    low, high = config.jpeg_quality_range
    return _Nuisance(
        angle_deg=float(strength * 8.0 * (2.0 * u[0] - 1.0)),
        scale=float(1.0 + strength * 0.06 * (2.0 * u[1] - 1.0)),
        shift=(float(strength * 3.0 * (2.0 * u[2] - 1.0)), float(strength * 3.0 * (2.0 * u[3] - 1.0))),
        expression=expression,
        glasses=glasses,
        background=tuple(int(25 + 206 * v) for v in u[8:11]),
        clothes=tuple(int(20 + 216 * v) for v in u[11:14]),
        gain=float(1.0 + strength * (0.35 * u[14] - 0.2)),
        gradient=(float(amplitude * math.cos(direction)), float(amplitude * math.sin(direction))),
        colour_cast=tuple(float(c) for c in cast),
        noise_sigma=float(strength * (0.5 + 4.5 * u[17])),
        noise_offset=int(u[18] * _NOISE_BANK_SPAN),
        jpeg_quality=int(low + min(high - low, int(u[19] * (high - low + 1)))),
    )


_NOISE_BANK_SPAN = 1 << 20
_noise_bank: np.ndarray | None = None


def _noise(offset: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Unit Gaussian noise: a window of one fixed bank, far cheaper than fresh normals for every image."""
    global _noise_bank
    count = shape[0] * shape[1] * shape[2]
    if _noise_bank is None or _noise_bank.size < _NOISE_BANK_SPAN + count:
        bank_rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([0x5EED, 0xA015E])))
        _noise_bank = bank_rng.standard_normal(_NOISE_BANK_SPAN + count, dtype=np.float32)
    return _noise_bank[offset:offset + count].reshape(shape)


class _IdentityAssets:
    """Per-identity drawing data, cached: parameters, ready-made draw calls (canvas pixels), skin texture.

    Everything that does not depend on the image is computed once here, so that drawing one image is a
    short loop of PIL calls.
    """

    def __init__(self, seed: int, identity: int, config: SynthConfig) -> None:
        self.params = p = identity_params(seed, identity, config)
        self.canvas_size = config.render_scale * config.image_size
        k = config.render_scale * config.image_size / TEMPLATE_SIZE
        # Template coordinates put pixel centres on integers (as cv2's warpAffine for the ArcFace template);
        # output pixel j covers canvas pixels s*j .. s*j + s - 1, whose centre is s*j + (s - 1) / 2.
        offset = (config.render_scale - 1) / 2

        def pts(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
            return [(k * x + offset, k * y + offset) for x, y in points]

        def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
            return [k * x0 + offset, k * y0 + offset, k * x1 + offset, k * y1 + offset]

        def width(pixels: float) -> int:
            return max(1, round(k * pixels))

        cx, cy = FACE_CENTRE
        a, b, pad = p.face_half_width, p.face_half_height, p.hair_volume
        bottom = TEMPLATE_SIZE + 2
        skin, hair = p.skin, p.hair_colour
        neck_half = 0.6 * a
        self.clothes = pts([(-2, TEMPLATE_SIZE - 6), (cx - neck_half - 8, TEMPLATE_SIZE - 9),
                            (cx + neck_half + 8, TEMPLATE_SIZE - 9), (TEMPLATE_SIZE + 2, TEMPLATE_SIZE - 6),
                            (bottom, bottom), (-2, bottom)])

        t = np.linspace(0.0, 2.0 * math.pi, 64, endpoint=False)
        face_x = a * np.cos(t) * (1.0 - p.jaw_taper * np.clip(np.sin(t), 0.0, None) ** 2)
        self.face = pts(zip(cx + face_x, cy + b * np.sin(t), strict=True))

        # Static layers under the eyes and mouth, as deferred ImageDraw calls.
        shade_neck, shade_ear, shade_bridge = _shade(skin, 0.86), _shade(skin, 0.9), _shade(skin, 0.94)
        shade_nostril = _shade(skin, 0.45)
        under: list[tuple[str, tuple, dict]] = []
        if p.hairstyle == "long":
            long_hair = [(cx - a - pad - 4, cy - 20), (cx - a - pad - 7, bottom), (cx + a + pad + 7, bottom),
                         (cx + a + pad + 4, cy - 20)]
            under.append(_op("polygon", pts(long_hair), fill=hair))
        neck = [(cx - neck_half, cy + 25), (cx - neck_half - 2, bottom), (cx + neck_half + 2, bottom),
                (cx + neck_half, cy + 25)]
        under.append(_op("polygon", pts(neck), fill=shade_neck))
        ear_y = (p.eye_y + p.nose_tip_y) / 2
        for side in (-1.0, 1.0):
            ex = cx + side * (a - 1.0)
            under.append(_op("ellipse", box(ex - 4.0, ear_y - 9.0, ex + 4.0, ear_y + 8.0), fill=shade_ear))
        if p.hairstyle != "bald":
            hair_box = box(cx - a - pad, cy - b - pad, cx + a + pad, cy + 0.4 * b)
            under.append(_op("ellipse", hair_box, fill=hair))
        under.append(_op("polygon", self.face, fill=skin))
        fine = min(1.0, config.fine_amplitude)
        if fine > 0:
            mole_colour = _mix(skin, (70, 44, 32), 0.85 * fine)
            for x, y, r in p.moles:
                under.append(_op("ellipse", box(x - r, y - r, x + r, y + r), fill=mole_colour))
            wrinkle_colour = _shade(skin, 1.0 - 0.22 * fine)
            for line in p.wrinkles:
                under.append(_op("line", pts(line), fill=wrinkle_colour, width=width(1.0)))
        nose_w, tip = p.nose_half_width, p.nose_tip_y
        bridge = [(cx - 1.5, p.eye_y + 3), (cx + 1.5, p.eye_y + 3), (cx + 0.6 * nose_w, tip - 2),
                  (cx - 0.6 * nose_w, tip - 2)]
        under.append(_op("polygon", pts(bridge), fill=shade_bridge))
        under.append(_op("ellipse", box(cx - nose_w, tip - 3.0, cx + nose_w, tip + 2.0), fill=shade_neck))
        for side in (-1.0, 1.0):
            nx = cx + side * 0.5 * nose_w
            under.append(_op("ellipse", box(nx - 1.6, tip - 0.6, nx + 1.6, tip + 1.2), fill=shade_nostril))
        self.under = under

        # Eyes open / closed, then brows (static, drawn over either).
        lid_colour = (38, 28, 24)
        ew, eh = p.eye_half_width, p.eye_half_height
        eyes_open: list[tuple[str, tuple, dict]] = []
        eyes_closed: list[tuple[str, tuple, dict]] = []
        brows: list[tuple[str, tuple, dict]] = []
        brow_colour = _mix(hair, (20, 16, 14), 0.35)
        for side in (-1.0, 1.0):
            ex, ey = cx + side * p.eye_distance / 2, p.eye_y
            eye_box = box(ex - ew, ey - eh, ex + ew, ey + eh)
            iris = min(eh * 1.05, ew * 0.55)
            pupil = 0.45 * iris
            eyes_open += [_op("ellipse", eye_box, fill=(236, 232, 226)),
                          _op("ellipse", box(ex - iris, ey - iris, ex + iris, ey + iris), fill=p.iris_colour),
                          _op("ellipse", box(ex - pupil, ey - pupil, ex + pupil, ey + pupil),
                              fill=(14, 12, 12)),
                          _op("arc", eye_box, 180, 360, fill=lid_colour, width=width(1.3))]
            closed_lid = box(ex - ew, ey - 0.6 * eh, ex + ew, ey + 0.6 * eh)
            eyes_closed += [_op("ellipse", eye_box, fill=shade_ear),
                            _op("arc", closed_lid, 0, 180, fill=lid_colour, width=width(1.2))]
            u = np.linspace(-1.0, 1.0, 7)
            brow_x = ex + side * u * 1.3 * ew
            brow_y = ey - p.brow_gap - p.brow_arch * (1.0 - u * u) - p.brow_tilt * u
            brows.append(_op("line", pts(zip(brow_x, brow_y, strict=True)), fill=brow_colour,
                             width=width(p.brow_thickness), joint="curve"))
        self.eyes = {False: eyes_open + brows, True: eyes_closed + brows}

        # Mouth per expression.
        mw, my, lt, lips = p.mouth_half_width, p.mouth_y, p.lip_thickness, p.lip_colour
        line_colour = _shade(lips, 0.55)
        sw = 1.1 * mw
        self.mouth = {
            "neutral": [_op("ellipse", box(cx - mw, my - lt, cx + mw, my + lt), fill=lips),
                        _op("line", pts([(cx - mw, my), (cx + mw, my)]), fill=line_colour, width=width(1.0))],
            "smile": [_op("chord", box(cx - sw, my - lt - 2.0, cx + sw, my + lt + 2.0), 0, 180, fill=lips),
                      _op("arc", box(cx - sw, my - 3.0 * lt, cx + sw, my + 0.6 * lt), 15, 165,
                          fill=line_colour, width=width(1.0))],
            "open": [_op("ellipse", box(cx - 0.9 * mw, my - 1.3 * lt, cx + 0.9 * mw, my + 2.4 * lt),
                         fill=lips),
                     _op("ellipse", box(cx - 0.65 * mw, my - 0.5 * lt, cx + 0.65 * mw, my + 1.6 * lt),
                         fill=(58, 22, 24)),
                     _op("chord", box(cx - 0.6 * mw, my - 0.5 * lt, cx + 0.6 * mw, my + 0.5 * lt), 180, 360,
                         fill=(230, 226, 214))],
        }
        front = self._hair_front()
        self.hair_front = None if front is None else pts(front)

        # Glasses geometry (the frame colour is per image).
        radius = ew + 3.5
        self.glasses: list[tuple[str, tuple, dict]] = []
        for side in (-1.0, 1.0):
            ex = cx + side * p.eye_distance / 2
            rim = box(ex - radius, p.eye_y - radius + 1, ex + radius, p.eye_y + radius - 1)
            self.glasses.append(_op("ellipse", rim, width=width(1.5)))
            temple = pts([(ex + side * radius, p.eye_y), (cx + side * a, p.eye_y - 2)])
            self.glasses.append(_op("line", temple, width=width(1.5)))
        inner = p.eye_distance / 2 - radius
        bridge_bar = pts([(cx - inner, p.eye_y - 1), (cx + inner, p.eye_y - 1)])
        self.glasses.append(_op("line", bridge_bar, width=width(1.5)))
        self.texture = self._texture(config)

    def _hair_front(self) -> list[tuple[float, float]] | None:
        """Hair over the forehead: the top of the hair outline down to an identity-shaped hairline."""
        p = self.params
        if p.hairstyle == "bald":
            return None
        cx, cy = FACE_CENTRE
        a, b, pad = p.face_half_width + p.hair_volume, p.face_half_height + p.hair_volume, p.hair_volume
        # How far down the sides the hair reaches (radians below the horizontal through the outline centre).
        side_angle = {"crop": 0.55, "fringe": 0.45, "side_part": 0.5, "long": 0.2, "receding": 0.6}
        side_angle = side_angle[p.hairstyle]
        angles = np.linspace(math.pi + side_angle, 2.0 * math.pi - side_angle, 24)
        outline = [(cx + a * math.cos(t), cy - pad + b * math.sin(t)) for t in angles]
        half = p.face_half_width * 0.92
        xs = np.linspace(half, -half, 15)
        u = xs / half
        if p.hairstyle == "fringe":
            ys = p.hairline_y + 12.0 + 1.5 * np.cos(u * 9.0)
        elif p.hairstyle == "side_part":
            ys = p.hairline_y + 2.0 + 6.0 * u + 3.0 * u**2
        elif p.hairstyle == "receding":
            ys = p.hairline_y - 4.0 + 10.0 * u**2
        else:
            ys = p.hairline_y + 5.0 * u**2
        # The outline runs left -> top -> right; return along the hairline right -> left via the temples.
        line = [(cx + x, y) for x, y in zip(xs, ys, strict=True)]
        right_temple = (cx + half, max(outline[-1][1], float(ys[0])))
        left_temple = (cx - half, max(outline[0][1], float(ys[-1])))
        return outline + [right_temple] + line + [left_temple]

    def _texture(self, config: SynthConfig) -> Image.Image | None:
        """Band-pass skin texture: RGB multiplier image at the output size (255 = 1, off the face), or None.

        Darkening only, so that it can be applied with `ImageChops.multiply`; features of ~3 template pixels,
        i.e. well below one 14x14 pixel.
        """
        amplitude = 0.03 * config.fine_amplitude
        if amplitude == 0:
            return None
        size = config.image_size
        rng = np.random.Generator(np.random.PCG64(self.params.texture_seed))
        fine = max(size // 3, 4)
        noise = rng.standard_normal((fine, fine)).astype(np.float32)
        coarse = max(size // 12, 2)
        low = Image.fromarray(noise, mode="F").resize((coarse, coarse), Image.BOX)
        band = noise - np.asarray(low.resize((fine, fine), Image.BILINEAR), dtype=np.float32)
        band = np.asarray(Image.fromarray(band, mode="F").resize((size, size), Image.BICUBIC), np.float32)
        band = np.clip(band / (band.std() + 1e-6), -1.5, 3.0)
        mask = Image.new("L", (self.canvas_size, self.canvas_size), 0)
        ImageDraw.Draw(mask).polygon(self.face, fill=255)
        mask = np.asarray(mask.resize((size, size), Image.BOX), dtype=np.float32) / 255.0
        multiplier = 1.0 - np.clip(amplitude * (1.5 + band), 0.0, 1.0) * mask
        levels = np.round(255.0 * multiplier).astype(np.uint8)
        return Image.fromarray(np.repeat(levels[:, :, None], 3, axis=2), mode="RGB")


@lru_cache(maxsize=64)
def _assets(seed: int, identity: int, config: SynthConfig) -> _IdentityAssets:
    return _IdentityAssets(seed, identity, config)


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    return coords[None, :], coords[:, None]


def _op(method: str, *args: object, **kwargs: object) -> tuple[str, tuple, dict]:
    """A deferred ``ImageDraw`` call: method name, positional and keyword arguments."""
    return method, args, kwargs


def _draw_face(assets: _IdentityAssets, nuisance: _Nuisance) -> Image.Image:
    """The face in the canonical (template-aligned) frame at ``render_scale`` times the output size."""
    canvas = Image.new("RGB", (assets.canvas_size, assets.canvas_size), nuisance.background)
    draw = ImageDraw.Draw(canvas)
    draw.polygon(assets.clothes, fill=nuisance.clothes)
    expression, _, blink = nuisance.expression.partition("+")
    for method, args, kwargs in (*assets.under, *assets.eyes[bool(blink)], *assets.mouth[expression]):
        getattr(draw, method)(*args, **kwargs)
    if assets.hair_front is not None:
        draw.polygon(assets.hair_front, fill=assets.params.hair_colour)
    if nuisance.glasses is not None:
        for method, args, kwargs in assets.glasses:
            colour = {"outline": nuisance.glasses} if method == "ellipse" else {"fill": nuisance.glasses}
            getattr(draw, method)(*args, **kwargs, **colour)
    return canvas


def _render(seed: int, identity: int, sample: int, config: SynthConfig) -> tuple[np.ndarray, int]:
    """Image and JPEG quality of ``(seed, identity, sample)``."""
    _check_id("seed", seed)
    _check_id("identity", identity)
    _check_id("sample", sample)
    assets = _assets(int(seed), int(identity), config)
    nuisance = _sample_nuisance(seed, identity, sample, config)
    image = _draw_face(assets, nuisance)
    size = config.image_size
    if config.render_scale > 1:
        image = image.reduce(config.render_scale)
    if assets.texture is not None:
        image = ImageChops.multiply(image, assets.texture)

    # Similarity jitter about the image centre: out = s R (in - c) + c + t; PIL wants in as a function of out.
    theta = math.radians(nuisance.angle_deg)
    cos_t, sin_t = math.cos(theta) / nuisance.scale, math.sin(theta) / nuisance.scale
    centre = size / 2.0
    tx = centre + nuisance.shift[0] * size / TEMPLATE_SIZE
    ty = centre + nuisance.shift[1] * size / TEMPLATE_SIZE
    coefficients = (cos_t, sin_t, centre - cos_t * tx - sin_t * ty,
                    -sin_t, cos_t, centre + sin_t * tx - cos_t * ty)
    image = image.transform((size, size), Image.AFFINE, coefficients, resample=Image.BILINEAR,
                            fillcolor=nuisance.background)

    # Lighting gradient, gain and colour cast, then sensor noise.
    grid_x, grid_y = _pixel_grid(size)
    light = nuisance.gain * (1.0 + nuisance.gradient[0] * grid_x + nuisance.gradient[1] * grid_y)
    light = light[:, :, None] * np.asarray(nuisance.colour_cast, dtype=np.float32)
    pixels = np.asarray(image, dtype=np.float32) * light
    if nuisance.noise_sigma > 0:
        pixels += np.float32(nuisance.noise_sigma) * _noise(nuisance.noise_offset, pixels.shape)
    pixels += 0.5
    return np.clip(pixels, 0, 255, out=pixels).astype(np.uint8), nuisance.jpeg_quality


def render_face(seed: int, identity: int, sample: int, config: SynthConfig | None = None) -> np.ndarray:
    """Image ``sample`` of ``identity``: uint8 RGB array (H, W, 3), a pure function of the arguments."""
    return _render(seed, identity, sample, config or SynthConfig())[0]


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a uint8 RGB (H, W, 3) array (baseline, 4:2:0 as cv2/insightface write)."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB array, got {array.dtype} {array.shape}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    buffer = io.BytesIO()
    Image.fromarray(array, mode="RGB").save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def render_face_jpeg(seed: int, identity: int, sample: int, config: SynthConfig | None = None) -> bytes:
    """JPEG bytes of `render_face`, at the sample's own quality drawn from ``config.jpeg_quality_range``."""
    image, quality = _render(seed, identity, sample, config or SynthConfig())
    return encode_jpeg(image, quality)


def _render_identity_jpegs(job: tuple[int, int, tuple[int, ...], SynthConfig]) -> list[bytes]:
    seed, identity, samples, config = job
    return [render_face_jpeg(seed, identity, sample, config) for sample in samples]


def _verification_plan(seed: int, name: str, pairs: int,
                       identities: int) -> tuple[list[tuple[int, int]], list[bool]]:
    """(identity, sample) of the ``2 * pairs`` images of set ``name`` and the pair labels.

    Ten contiguous folds; each fold holds ``pairs / 20`` same-identity pairs followed by as many
    different-identity pairs (the order of LFW's pairs.txt). Every image is a distinct sample.
    """
    base = VERIFICATION_ID_BASE[name]
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), base, 0, _PLAN_STREAM_TAG])))
    per_fold = pairs // 20
    same_order = np.concatenate([rng.permutation(identities) for _ in range(-(-pairs // 2 // identities))])
    next_sample = [0] * identities

    def take(local: int) -> tuple[int, int]:
        sample = next_sample[local]
        next_sample[local] += 1
        return base + local, sample

    images: list[tuple[int, int]] = []
    issame: list[bool] = []
    for fold in range(10):
        for local in same_order[fold * per_fold:(fold + 1) * per_fold]:
            images += [take(int(local)), take(int(local))]
            issame.append(True)
        for _ in range(per_fold):
            first, second = rng.choice(identities, size=2, replace=False)
            images += [take(int(first)), take(int(second))]
            issame.append(False)
    return images, issame


def _group_jobs(seed: int, keys: Sequence[tuple[int, int]], config: SynthConfig) -> list[tuple]:
    """Render jobs, one per identity (so each job reuses the identity's cached assets)."""
    by_identity: dict[int, list[int]] = {}
    for identity, sample in keys:
        by_identity.setdefault(identity, []).append(sample)
    return [(seed, identity, tuple(samples), config) for identity, samples in by_identity.items()]


class _Renderer:
    """Ordered rendering of jobs, in process or in a pool of spawned workers (safe beside torch threads)."""

    def __init__(self, workers: int) -> None:
        self.pool = None
        if workers > 1:
            self.pool = multiprocessing.get_context("spawn").Pool(workers)

    def map(self, jobs: list[tuple]) -> Iterator[list[bytes]]:
        if self.pool is None:
            return map(_render_identity_jpegs, jobs)
        return self.pool.imap(_render_identity_jpegs, jobs, chunksize=max(1, min(16, len(jobs) // 64)))

    def close(self, failed: bool) -> None:
        if self.pool is not None:
            if failed:
                self.pool.terminate()
            else:
                self.pool.close()
            self.pool.join()


def generate_dataset(out_dir: str | os.PathLike, identities: int, images_per_identity: int, pairs: int,
                     seed: int = 0, size: int = 112, config: SynthConfig | None = None, workers: int = 1,
                     progress: bool = False) -> dict:
    """Write a synthetic dataset in the insightface layout to ``out_dir`` and return a summary.

    Files: ``train.rec``/``train.idx`` (``identities`` classes 0..N-1, ``images_per_identity`` each,
    contiguous), ``property`` ("N,size,size"), ``agedb_30.bin``, ``lfw.bin``, ``cfp_fp.bin`` (``pairs`` pairs
    each, in 10 folds with equal same/different counts) and ``synthetic.json`` (the config, and the identity
    id and sample of every verification image). Verification identities are disjoint from the training
    identities and from each other (id ranges starting at `VERIFICATION_ID_BASE`). The same arguments give
    byte-identical files, whatever ``workers`` is. ``size`` must equal ``config.image_size`` when both are
    given. ``workers > 1`` renders in spawned processes, so a calling script needs the usual
    ``if __name__ == "__main__":`` guard.
    """
    if config is None:
        config = SynthConfig(image_size=size)
    elif config.image_size != size:
        raise ValueError(f"size={size} disagrees with config.image_size={config.image_size}; "
                         "pass matching values")
    _check_id("seed", seed)
    first_verification_id = min(VERIFICATION_ID_BASE.values())
    if not 1 <= identities < first_verification_id:
        raise ValueError(f"identities must be in 1..{first_verification_id - 1}, got {identities}")
    if images_per_identity < 1:
        raise ValueError(f"images_per_identity must be >= 1, got {images_per_identity}")
    if pairs < 20 or pairs % 20:
        raise ValueError(f"pairs must be a positive multiple of 20, got {pairs}: each of the 10 folds needs "
                         "an equal number of same and different pairs (pairs / 20 of each)")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    verification_identities = max(pairs // 4, 20)
    renderer = _Renderer(workers)
    rendered = 0
    failed = True

    def report(what: str, done: int, total: int, every: int = 1000) -> None:
        if progress and (done == total or done // every != (done - images_per_identity) // every):
            print(f"synthetic: {what} {done}/{total} images", file=sys.stderr, flush=True)

    try:
        train_keys = [(identity, sample) for identity in range(identities)
                      for sample in range(images_per_identity)]
        total_train = len(train_keys)

        def training_samples() -> Iterable[tuple[int, bytes]]:
            nonlocal rendered
            jobs = _group_jobs(seed, train_keys, config)
            for (_, identity, _, _), jpegs in zip(jobs, renderer.map(jobs), strict=True):
                for jpeg in jpegs:
                    rendered += 1
                    yield identity, jpeg
                report("train", rendered, total_train)

        write_face_records(out / "train.rec", out / "train.idx", training_samples())
        (out / "property").write_text(f"{identities},{size},{size}")

        meta_sets = {}
        for name in VERIFICATION_SETS:
            keys, issame = _verification_plan(seed, name, pairs, verification_identities)
            jobs = _group_jobs(seed, keys, config)
            by_key: dict[tuple[int, int], bytes] = {}
            for (_, identity, samples, _), jpegs in zip(jobs, renderer.map(jobs), strict=True):
                by_key.update({(identity, sample): jpeg for sample, jpeg in zip(samples, jpegs, strict=True)})
            rendered += len(keys)
            report(name, len(keys), len(keys))
            save_bin(out / f"{name}.bin", [by_key[key] for key in keys], np.asarray(issame, dtype=bool))
            base = VERIFICATION_ID_BASE[name]
            meta_sets[name] = {"identity_range": [base, base + verification_identities], "pairs": pairs,
                               "images": [list(key) for key in keys]}
        failed = False
    finally:
        renderer.close(failed)

    meta = {"generator": "fskd.data.synthetic", "seed": seed, "image_size": size, "config": asdict(config),
            "train": {"identity_range": [0, identities], "images_per_identity": images_per_identity},
            "verification": meta_sets}
    (out / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    seconds = time.perf_counter() - start
    return {
        "out_dir": str(out), "seed": seed, "image_size": size, "workers": workers,
        "identities": identities, "images_per_identity": images_per_identity, "train_images": total_train,
        "pairs_per_set": pairs, "verification_identities_per_set": verification_identities,
        "identity_ranges": {"train": (0, identities),
                            **{name: tuple(meta_sets[name]["identity_range"]) for name in VERIFICATION_SETS}},
        "images_rendered": rendered, "seconds": seconds, "images_per_second": rendered / max(seconds, 1e-9),
    }

