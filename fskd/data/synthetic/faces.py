"""One synthetic face image: identity parameters, per-image nuisance, drawing and JPEG encoding.

Each identity has parameters in three bands, chosen so that resolution matters:

* coarse (survive 14x14): face shape, skin tone and hair colour from small palettes (many identities share a
  coarse look), hairstyle and hairline;
* mid (sub-LR-pixel): inter-ocular distance, eye height and size, brows, nose, mouth, lip colour;
* fine (lost at 14x14): moles, an identity-seeded band-pass skin texture, one-pixel wrinkles, iris colour.

Each image adds nuisance: a similarity jitter (alignment error), expression (smile, open mouth, blink),
glasses, background colour, a lighting gradient, gain and colour cast, Gaussian noise and a JPEG quality.

Identity parameters come from ``SeedSequence([seed, identity])`` and the image nuisance from
``SeedSequence([seed, identity, sample, 1])``: numpy's SeedSequence ignores trailing zero words, so without
the tag ``[seed, identity, 0]`` would be the identity stream itself. Sensor noise is a window, chosen by the
image's stream, of one fixed Gaussian bank. Faces are drawn with PIL at ``render_scale`` times the output
size and box-downsampled, so that one-pixel cues get partial coverage instead of jagged on/off pixels.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from fskd.data.synthetic.config import HAIR_PALETTE, HAIRSTYLES, SKIN_PALETTE, SynthConfig

TEMPLATE_SIZE = 112
"""All geometry below is in pixels of the 112x112 ArcFace template and scaled to the requested size."""

LEFT_EYE = (38.2946, 51.6963)
RIGHT_EYE = (73.5318, 51.5014)
MOUTH_Y = 92.0
FACE_CENTRE = (56.0, 58.0)

IRIS_PALETTE: tuple[tuple[int, int, int], ...] = (
    (92, 58, 32), (46, 32, 22), (122, 96, 52), (78, 108, 70), (76, 108, 152), (112, 118, 124),
)
GLASSES_COLOURS: tuple[tuple[int, int, int], ...] = (
    (20, 20, 20), (90, 60, 30), (150, 150, 155), (40, 40, 90),
)

_SAMPLE_STREAM_TAG = 1

DrawOp = tuple[str, tuple, dict]
"""A deferred ``ImageDraw`` call: method name, positional and keyword arguments."""


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


def check_id(name: str, value: int) -> None:
    """Seeds, identities and sample numbers are non-negative integers (they key the random streams)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> tuple[int, int, int]:
    return tuple(int(round(min(255.0, max(0.0, x + (y - x) * t)))) for x, y in zip(a, b, strict=True))


def _shade(colour: Sequence[float], factor: float) -> tuple[int, int, int]:
    return tuple(int(round(min(255.0, max(0.0, c * factor)))) for c in colour)


# ---------------------------------------------------------------------------------------------------------
# Identity parameters
# ---------------------------------------------------------------------------------------------------------


def identity_params(seed: int, identity: int, config: SynthConfig | None = None) -> IdentityParams:
    """The parameters of ``identity``, a pure function of ``(seed, identity, config)``."""
    check_id("seed", seed)
    check_id("identity", identity)
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


# ---------------------------------------------------------------------------------------------------------
# Per-image nuisance
# ---------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------
# Per-identity drawing data
# ---------------------------------------------------------------------------------------------------------


def _op(method: str, *args: object, **kwargs: object) -> DrawOp:
    return method, args, kwargs


@dataclass(frozen=True)
class _Canvas:
    """Maps template coordinates to the pixels of the ``render_scale`` times larger drawing canvas."""

    size: int
    scale: float
    offset: float

    @classmethod
    def of(cls, config: SynthConfig) -> _Canvas:
        # Template coordinates put pixel centres on integers (as cv2's warpAffine for the ArcFace template);
        # output pixel j covers canvas pixels s*j .. s*j + s - 1, whose centre is s*j + (s - 1) / 2.
        return cls(size=config.render_scale * config.image_size,
                   scale=config.render_scale * config.image_size / TEMPLATE_SIZE,
                   offset=(config.render_scale - 1) / 2)

    def points(self, points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
        k, offset = self.scale, self.offset
        return [(k * x + offset, k * y + offset) for x, y in points]

    def box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        k, offset = self.scale, self.offset
        return [k * x0 + offset, k * y0 + offset, k * x1 + offset, k * y1 + offset]

    def width(self, pixels: float) -> int:
        """A line width of at least one canvas pixel."""
        return max(1, round(self.scale * pixels))


def _clothes(p: IdentityParams, canvas: _Canvas) -> list[tuple[float, float]]:
    """Shoulders along the bottom edge, around the neck (their colour is per image)."""
    cx = FACE_CENTRE[0]
    neck_half = 0.6 * p.face_half_width
    bottom = TEMPLATE_SIZE + 2
    return canvas.points([(-2, TEMPLATE_SIZE - 6), (cx - neck_half - 8, TEMPLATE_SIZE - 9),
                          (cx + neck_half + 8, TEMPLATE_SIZE - 9), (TEMPLATE_SIZE + 2, TEMPLATE_SIZE - 6),
                          (bottom, bottom), (-2, bottom)])


def _face_outline(p: IdentityParams, canvas: _Canvas) -> list[tuple[float, float]]:
    """The face: an ellipse whose lower half narrows towards the chin by ``jaw_taper``."""
    cx, cy = FACE_CENTRE
    t = np.linspace(0.0, 2.0 * math.pi, 64, endpoint=False)
    face_x = p.face_half_width * np.cos(t) * (1.0 - p.jaw_taper * np.clip(np.sin(t), 0.0, None) ** 2)
    return canvas.points(zip(cx + face_x, cy + p.face_half_height * np.sin(t), strict=True))


def _head(p: IdentityParams, canvas: _Canvas, face: list[tuple[float, float]]) -> list[DrawOp]:
    """Back to front: long hair, neck, ears, the hair mass behind the head, then the skin of the face."""
    cx, cy = FACE_CENTRE
    a, b, pad = p.face_half_width, p.face_half_height, p.hair_volume
    bottom = TEMPLATE_SIZE + 2
    neck_half = 0.6 * a
    ops: list[DrawOp] = []
    if p.hairstyle == "long":
        long_hair = [(cx - a - pad - 4, cy - 20), (cx - a - pad - 7, bottom), (cx + a + pad + 7, bottom),
                     (cx + a + pad + 4, cy - 20)]
        ops.append(_op("polygon", canvas.points(long_hair), fill=p.hair_colour))
    neck = [(cx - neck_half, cy + 25), (cx - neck_half - 2, bottom), (cx + neck_half + 2, bottom),
            (cx + neck_half, cy + 25)]
    ops.append(_op("polygon", canvas.points(neck), fill=_shade(p.skin, 0.86)))
    ear_y = (p.eye_y + p.nose_tip_y) / 2
    for side in (-1.0, 1.0):
        ex = cx + side * (a - 1.0)
        ops.append(_op("ellipse", canvas.box(ex - 4.0, ear_y - 9.0, ex + 4.0, ear_y + 8.0),
                       fill=_shade(p.skin, 0.9)))
    if p.hairstyle != "bald":
        hair_box = canvas.box(cx - a - pad, cy - b - pad, cx + a + pad, cy + 0.4 * b)
        ops.append(_op("ellipse", hair_box, fill=p.hair_colour))
    ops.append(_op("polygon", face, fill=p.skin))
    return ops


def _skin_marks(p: IdentityParams, canvas: _Canvas, fine_amplitude: float) -> list[DrawOp]:
    """Moles and one-pixel wrinkles, whose contrast is the fine band's amplitude (none at 0)."""
    fine = min(1.0, fine_amplitude)
    if fine <= 0:
        return []
    ops: list[DrawOp] = []
    mole_colour = _mix(p.skin, (70, 44, 32), 0.85 * fine)
    for x, y, r in p.moles:
        ops.append(_op("ellipse", canvas.box(x - r, y - r, x + r, y + r), fill=mole_colour))
    wrinkle_colour = _shade(p.skin, 1.0 - 0.22 * fine)
    for line in p.wrinkles:
        ops.append(_op("line", canvas.points(line), fill=wrinkle_colour, width=canvas.width(1.0)))
    return ops


def _nose(p: IdentityParams, canvas: _Canvas) -> list[DrawOp]:
    """Bridge, tip and nostrils, as shading of the skin colour."""
    cx = FACE_CENTRE[0]
    nose_w, tip = p.nose_half_width, p.nose_tip_y
    bridge = [(cx - 1.5, p.eye_y + 3), (cx + 1.5, p.eye_y + 3), (cx + 0.6 * nose_w, tip - 2),
              (cx - 0.6 * nose_w, tip - 2)]
    ops = [_op("polygon", canvas.points(bridge), fill=_shade(p.skin, 0.94)),
           _op("ellipse", canvas.box(cx - nose_w, tip - 3.0, cx + nose_w, tip + 2.0), fill=_shade(p.skin, 0.86))]
    for side in (-1.0, 1.0):
        nx = cx + side * 0.5 * nose_w
        ops.append(_op("ellipse", canvas.box(nx - 1.6, tip - 0.6, nx + 1.6, tip + 1.2),
                       fill=_shade(p.skin, 0.45)))
    return ops


_LID_COLOUR = (38, 28, 24)


def _eye_centres(p: IdentityParams) -> list[tuple[float, float]]:
    return [(FACE_CENTRE[0] + side * p.eye_distance / 2, p.eye_y) for side in (-1.0, 1.0)]


def _open_eyes(p: IdentityParams, canvas: _Canvas) -> list[DrawOp]:
    """Sclera, iris, pupil and upper lid of both eyes."""
    ew, eh = p.eye_half_width, p.eye_half_height
    iris = min(eh * 1.05, ew * 0.55)
    pupil = 0.45 * iris
    ops: list[DrawOp] = []
    for ex, ey in _eye_centres(p):
        eye_box = canvas.box(ex - ew, ey - eh, ex + ew, ey + eh)
        ops += [_op("ellipse", eye_box, fill=(236, 232, 226)),
                _op("ellipse", canvas.box(ex - iris, ey - iris, ex + iris, ey + iris), fill=p.iris_colour),
                _op("ellipse", canvas.box(ex - pupil, ey - pupil, ex + pupil, ey + pupil), fill=(14, 12, 12)),
                _op("arc", eye_box, 180, 360, fill=_LID_COLOUR, width=canvas.width(1.3))]
    return ops


def _closed_eyes(p: IdentityParams, canvas: _Canvas) -> list[DrawOp]:
    """Both eyes blinking: a skin-shaded eye area crossed by the lid line."""
    ew, eh = p.eye_half_width, p.eye_half_height
    ops: list[DrawOp] = []
    for ex, ey in _eye_centres(p):
        closed_lid = canvas.box(ex - ew, ey - 0.6 * eh, ex + ew, ey + 0.6 * eh)
        ops += [_op("ellipse", canvas.box(ex - ew, ey - eh, ex + ew, ey + eh), fill=_shade(p.skin, 0.9)),
                _op("arc", closed_lid, 0, 180, fill=_LID_COLOUR, width=canvas.width(1.2))]
    return ops


def _brows(p: IdentityParams, canvas: _Canvas) -> list[DrawOp]:
    """Both brows, drawn over open or closed eyes alike."""
    brow_colour = _mix(p.hair_colour, (20, 16, 14), 0.35)
    u = np.linspace(-1.0, 1.0, 7)
    ops: list[DrawOp] = []
    for side, (ex, ey) in zip((-1.0, 1.0), _eye_centres(p), strict=True):
        brow_x = ex + side * u * 1.3 * p.eye_half_width
        brow_y = ey - p.brow_gap - p.brow_arch * (1.0 - u * u) - p.brow_tilt * u
        ops.append(_op("line", canvas.points(zip(brow_x, brow_y, strict=True)), fill=brow_colour,
                       width=canvas.width(p.brow_thickness), joint="curve"))
    return ops


def _mouths(p: IdentityParams, canvas: _Canvas) -> dict[str, list[DrawOp]]:
    """The mouth for each expression: neutral, smile, open."""
    cx = FACE_CENTRE[0]
    mw, my, lt, lips = p.mouth_half_width, p.mouth_y, p.lip_thickness, p.lip_colour
    line_colour = _shade(lips, 0.55)
    line_width = canvas.width(1.0)
    sw = 1.1 * mw
    box = canvas.box
    return {
        "neutral": [_op("ellipse", box(cx - mw, my - lt, cx + mw, my + lt), fill=lips),
                    _op("line", canvas.points([(cx - mw, my), (cx + mw, my)]), fill=line_colour,
                        width=line_width)],
        "smile": [_op("chord", box(cx - sw, my - lt - 2.0, cx + sw, my + lt + 2.0), 0, 180, fill=lips),
                  _op("arc", box(cx - sw, my - 3.0 * lt, cx + sw, my + 0.6 * lt), 15, 165, fill=line_colour,
                      width=line_width)],
        "open": [_op("ellipse", box(cx - 0.9 * mw, my - 1.3 * lt, cx + 0.9 * mw, my + 2.4 * lt), fill=lips),
                 _op("ellipse", box(cx - 0.65 * mw, my - 0.5 * lt, cx + 0.65 * mw, my + 1.6 * lt),
                     fill=(58, 22, 24)),
                 _op("chord", box(cx - 0.6 * mw, my - 0.5 * lt, cx + 0.6 * mw, my + 0.5 * lt), 180, 360,
                     fill=(230, 226, 214))],
    }


def _hair_front(p: IdentityParams) -> list[tuple[float, float]] | None:
    """Hair over the forehead (template pixels): the top of the hair outline down to an identity-shaped
    hairline; None when bald."""
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


def _glasses(p: IdentityParams, canvas: _Canvas) -> list[DrawOp]:
    """Rims, temples and bridge bar, without colour (the frame colour is per image)."""
    cx = FACE_CENTRE[0]
    radius = p.eye_half_width + 3.5
    line_width = canvas.width(1.5)
    ops: list[DrawOp] = []
    for side in (-1.0, 1.0):
        ex = cx + side * p.eye_distance / 2
        rim = canvas.box(ex - radius, p.eye_y - radius + 1, ex + radius, p.eye_y + radius - 1)
        ops.append(_op("ellipse", rim, width=line_width))
        temple = canvas.points([(ex + side * radius, p.eye_y), (cx + side * p.face_half_width, p.eye_y - 2)])
        ops.append(_op("line", temple, width=line_width))
    inner = p.eye_distance / 2 - radius
    bridge_bar = canvas.points([(cx - inner, p.eye_y - 1), (cx + inner, p.eye_y - 1)])
    ops.append(_op("line", bridge_bar, width=line_width))
    return ops


def _skin_texture(p: IdentityParams, config: SynthConfig, canvas: _Canvas,
                  face: list[tuple[float, float]]) -> Image.Image | None:
    """Band-pass skin texture: RGB multiplier image at the output size (255 = 1, off the face), or None.

    Darkening only, so that it can be applied with `ImageChops.multiply`; features of ~3 template pixels,
    i.e. well below one 14x14 pixel.
    """
    amplitude = 0.03 * config.fine_amplitude
    if amplitude == 0:
        return None
    size = config.image_size
    rng = np.random.Generator(np.random.PCG64(p.texture_seed))
    fine = max(size // 3, 4)
    noise = rng.standard_normal((fine, fine)).astype(np.float32)
    coarse = max(size // 12, 2)
    low = Image.fromarray(noise, mode="F").resize((coarse, coarse), Image.BOX)
    band = noise - np.asarray(low.resize((fine, fine), Image.BILINEAR), dtype=np.float32)
    band = np.asarray(Image.fromarray(band, mode="F").resize((size, size), Image.BICUBIC), np.float32)
    band = np.clip(band / (band.std() + 1e-6), -1.5, 3.0)
    mask = Image.new("L", (canvas.size, canvas.size), 0)
    ImageDraw.Draw(mask).polygon(face, fill=255)
    mask = np.asarray(mask.resize((size, size), Image.BOX), dtype=np.float32) / 255.0
    multiplier = 1.0 - np.clip(amplitude * (1.5 + band), 0.0, 1.0) * mask
    levels = np.round(255.0 * multiplier).astype(np.uint8)
    return Image.fromarray(np.repeat(levels[:, :, None], 3, axis=2), mode="RGB")


class _IdentityAssets:
    """Per-identity drawing data, cached: parameters, ready-made draw calls (canvas pixels), skin texture.

    Everything that does not depend on the image is computed once here, so that drawing one image is a
    short loop of PIL calls.
    """

    def __init__(self, seed: int, identity: int, config: SynthConfig) -> None:
        self.params = p = identity_params(seed, identity, config)
        canvas = _Canvas.of(config)
        self.canvas_size = canvas.size
        self.clothes = _clothes(p, canvas)
        self.face = _face_outline(p, canvas)
        # Static layers under the eyes and mouth.
        self.under = [*_head(p, canvas, self.face), *_skin_marks(p, canvas, config.fine_amplitude),
                      *_nose(p, canvas)]
        brows = _brows(p, canvas)
        self.eyes = {False: _open_eyes(p, canvas) + brows, True: _closed_eyes(p, canvas) + brows}
        self.mouth = _mouths(p, canvas)
        front = _hair_front(p)
        self.hair_front = None if front is None else canvas.points(front)
        self.glasses = _glasses(p, canvas)
        self.texture = _skin_texture(p, config, canvas, self.face)


@lru_cache(maxsize=64)
def _assets(seed: int, identity: int, config: SynthConfig) -> _IdentityAssets:
    return _IdentityAssets(seed, identity, config)


# ---------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    return coords[None, :], coords[:, None]


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
    check_id("seed", seed)
    check_id("identity", identity)
    check_id("sample", sample)
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
