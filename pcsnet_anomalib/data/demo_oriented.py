"""Rotation-sensitive demo categories: every normal image has the same orientation, so a rotation is a defect.

PCSNet has a rotation-sensitive setting for classes such as MVTec AD's ``grid`` and ``screw`` or MPDD's parts,
where the pose of the object is part of what "normal" means. These two generated categories test it:

- ``stripes``: a dyed woven surface whose threads run at one fixed angle (30 degrees) with a fixed period, with
  mild irregularity (waviness, thread width and tint variation, a faint cross weave). Defects: ``rotated`` (a
  patch where the threads run 12-30 degrees off, with the same period, contrast and colour, so only the
  orientation gives it away), ``shifted`` (a patch with a half-period phase shift or a changed period), ``thin``
  (a 1-2 px line of 10-20 grey levels across the threads) and ``colour`` (a patch of another hue at the same
  luminance).
- ``screw``: a hex-head screw lying horizontally in the middle of a light background, in the same pose in every
  normal image (an aligned part, unlike MVTec AD's screw). Defects: ``rotated`` (the whole screw turned by 6-15
  degrees about its centre: the rotation itself is the defect), ``thread`` (crests sheared off over a few
  pitches), ``tip`` (the tip broken off) and ``scratch`` (a thin low-contrast scratch on the head or shaft).

Each image is rendered from drawn parameters (pose jitter of at most 1 degree, translation or phase jitter,
brightness gain 0.95-1.05, a slight illumination gradient, sensor noise of about 2 grey levels), so a defective
image is the same scene rendered again with changed parameters, under the same lighting and noise. Its mask is
exactly the pixels that differ from the normal rendering (holes filled; a pixel of the defect region that
rounding left unchanged is moved by one grey level); the screw's soft contact shadow moves with the part, so the
masks of ``rotated`` and ``tip`` include the few pixels of shadow that change. Output is deterministic for a
generator state, byte for byte, and depends on numpy and OpenCV only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache

import cv2
import numpy as np

from pcsnet_anomalib.data.drawing import changed_mask, smooth_noise

CATEGORIES: dict[str, tuple[str, ...]] = {
    "stripes": ("rotated", "shifted", "thin", "colour"),
    "screw": ("rotated", "thread", "tip", "scratch"),
}

_MAX_TRIES = 50
_MIN_CHANGE = 0.5  # grey levels: smaller changes of the noise-free rendering are left out of a defect
_DEG = np.pi / 180.0

# stripes
_STRIPE_ANGLE = 30.0 * _DEG  # direction of the threads, counter-clockwise from the x axis
_STRIPE_PERIOD = 12.0 / 256.0  # of the image size
_MIN_STRIPE_PERIOD = 4.0  # pixels, so that small images do not alias
_WEFT_PERIODS = 1.7  # the cross weave repeats every 1.7 thread periods along a thread
_THREAD_TABLE = 64  # per-thread widths and tints repeat after this many threads
_DYE = np.array([0.29, 0.49, 0.86], np.float32)  # denim-like blue, relative to 255

# screw, in units of the image size along the axis (u) and across it (v); the screw spans u in [-0.4, 0.41]
_HEAD_U = (-0.4, -0.29)
_HEAD_HALF_HEIGHT = 0.115
_HEAD_CORNER = 0.018
_SHANK_RADIUS = 0.058
_MAJOR_RADIUS = 0.066
_MINOR_RADIUS = 0.05
_THREAD_START = -0.22
_PITCH = 0.036
_MIN_PITCH = 3.2  # pixels
_TAPER_U = (0.32, 0.41)
_STEEL = np.array([0.80, 0.82, 0.86], np.float32)
_BACKGROUND = np.array([222.0, 219.0, 212.0], np.float32)
_SHADOW = (0.15, 0.003, 0.006, 0.005)  # strength; offset right, offset down and blur sigma in image sizes


@dataclass(frozen=True)
class _Capture:
    """Lighting and sensor of one image: a gain field (gain x illumination gradient) and additive noise."""

    light: np.ndarray  # (size, size) float32, about 0.91-1.09
    noise: np.ndarray  # (size, size, 3) float32 grey levels, sigma about 2

    def expose(self, clean: np.ndarray) -> np.ndarray:
        """Return the lit noise-free image (grey levels, float32) of a rendered ``clean`` image."""
        return clean * self.light[:, :, None]

    def record(self, clean: np.ndarray) -> np.ndarray:
        """Return the uint8 RGB image the camera records of a rendered ``clean`` image."""
        return np.clip(np.rint(self.expose(clean) + self.noise), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class _Stripes:
    """Drawn parameters of a ``stripes`` image."""

    size: int
    angle: float  # radians
    period: float  # pixels
    phase: float  # in periods
    widths: np.ndarray  # (_THREAD_TABLE,) thread width as a fraction of the period
    tints: np.ndarray  # (_THREAD_TABLE,) relative brightness of each thread
    fibres: np.ndarray  # (2, _THREAD_TABLE) phases of the streaks along each thread
    warp: np.ndarray  # (size, size) displacement across the threads, in periods
    swell: np.ndarray  # (size, size) relative thread width variation along the threads
    weft_phase: float  # radians
    capture: _Capture


@dataclass(frozen=True)
class _ThreadDamage:
    """Sheared thread crests of a ``thread`` defect (lengths in pixels)."""

    centre: float  # along the axis
    half_length: float
    sides: tuple[int, ...]  # -1: upper silhouette, +1: lower silhouette
    depth: float  # fraction of the thread height removed


@dataclass(frozen=True)
class _TipBreak:
    """Fracture of a ``tip`` defect: the shaft ends at ``u = position + slant * v + jag(v)`` (pixels)."""

    position: float
    slant: float
    jag: tuple[tuple[float, float, float], ...]  # (amplitude px, radians per px, phase) of each ripple


@dataclass(frozen=True)
class _Screw:
    """Drawn parameters of a ``screw`` image (``damage`` and ``tip_break`` are set by defects only)."""

    size: int
    centre: tuple[float, float]  # (x, y) pixels
    angle: float  # radians, counter-clockwise
    thread_phase: float  # in pitches
    marks: tuple[tuple[float, float, float], ...]  # turning marks on the shank: amplitude, radians per px, phase
    background: np.ndarray  # (size, size, 3) grey levels
    capture: _Capture
    damage: _ThreadDamage | None = None
    tip_break: _TipBreak | None = None


@cache
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only pixel-centre coordinates ``(x, y)``, float32, shape (size, size)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _draw_capture(rng: np.random.Generator, size: int) -> _Capture:
    """Draw the brightness gain, a slight linear illumination gradient and the sensor noise."""
    x, y = _grid(size)
    gain = rng.uniform(0.95, 1.05)
    slope = rng.uniform(0.0, 0.04)
    direction = rng.uniform(0.0, 2 * np.pi)
    centre = (size - 1) / 2
    ramp = ((x - centre) * np.cos(direction) + (y - centre) * np.sin(direction)) / (size / 2)
    light = (gain * (1.0 + slope * ramp)).astype(np.float32)
    common = rng.standard_normal((size, size, 1), dtype=np.float32)
    own = rng.standard_normal((size, size, 3), dtype=np.float32)
    return _Capture(light=light, noise=1.7 * common + 1.0 * own)


def _smoothstep(edge0: float, edge1: float, value: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at ``edge0`` to 1 at ``edge1``."""
    t = np.clip((value - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _blob(rng: np.random.Generator, size: int, radius: float, elongation: float) -> np.ndarray:
    """Irregular ellipse of mean radius ``radius`` pixels: coverage in [0, 1] with a 1-2 px anti-aliased edge."""
    cx, cy = rng.uniform(radius, size - 1 - radius, 2)
    stretch = rng.uniform(1.0, elongation)
    rx, ry = radius * np.sqrt(stretch), radius / np.sqrt(stretch)
    turn = rng.uniform(0.0, np.pi)
    x, y = _grid(size)
    dx, dy = x - cx, y - cy
    a = (dx * np.cos(turn) + dy * np.sin(turn)) / rx
    b = (-dx * np.sin(turn) + dy * np.cos(turn)) / ry
    field = np.sqrt(a * a + b * b) + 0.12 * smooth_noise(rng, size, 5)
    return np.clip(0.5 + (1.0 - field) * radius / 1.2, 0.0, 1.0)


def _polyline(rng: np.random.Generator, size: int, start: np.ndarray, heading: float, length: float) -> np.ndarray:
    """Anti-aliased 1 px (2 px on large images) gently bending stroke; return its coverage in [0, 1]."""
    segments = int(rng.integers(2, 5))
    points = [start]
    for _ in range(segments):
        heading += rng.uniform(-0.15, 0.15)
        step = length / segments * np.array([np.cos(heading), np.sin(heading)])
        points.append(np.clip(points[-1] + step, 1.0, size - 2.0))
    canvas = np.zeros((size, size), np.uint8)
    pts = np.rint(np.array(points) * 16).astype(np.int32)  # 4 bits of sub-pixel precision
    cv2.polylines(canvas, [pts], False, 255, max(1, round(size / 256)), cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255.0


# ---------------------------------------------------------------------------------------------------- stripes


def _draw_stripes(rng: np.random.Generator, size: int) -> _Stripes:
    """Draw a normal ``stripes`` scene: phase, <= 0.8 degree angle jitter, thread irregularity, lighting."""
    period = max(_MIN_STRIPE_PERIOD, _STRIPE_PERIOD * size) * rng.uniform(0.99, 1.01)
    return _Stripes(
        size=size,
        angle=_STRIPE_ANGLE + rng.uniform(-0.8, 0.8) * _DEG,
        period=period,
        phase=rng.uniform(0.0, 1.0),
        widths=rng.uniform(0.58, 0.8, _THREAD_TABLE).astype(np.float32),
        tints=rng.uniform(0.92, 1.08, _THREAD_TABLE).astype(np.float32),
        fibres=rng.uniform(0.0, 2 * np.pi, (2, _THREAD_TABLE)).astype(np.float32),
        warp=0.1 * smooth_noise(rng, size, 6),
        swell=smooth_noise(rng, size, 12),
        weft_phase=rng.uniform(0.0, 2 * np.pi),
        capture=_draw_capture(rng, size),
    )


def _render_stripes(
    scene: _Stripes, x: np.ndarray, y: np.ndarray, phase_shift: float = 0.0, turn: float = 0.0
) -> np.ndarray:
    """Render the woven surface sampled at pixel positions ``(x, y)``; return RGB grey levels (float32).

    ``phase_shift`` (periods) and ``turn`` (radians, added to the thread angle) modify the weave.
    """
    centre = (scene.size - 1) / 2
    angle = scene.angle + turn
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    dx, dy = x - centre, y - centre
    across = (dx * sin + dy * cos) / scene.period + scene.warp + scene.phase + phase_shift
    along = (dx * cos - dy * sin) / scene.period
    thread = np.floor(across)
    index = thread.astype(np.int64) % _THREAD_TABLE
    offset = (across - thread - 0.5) / (0.5 * scene.widths[index] * (1.0 + 0.08 * scene.swell))
    height = np.clip(1.0 - offset * offset, 0.0, 1.0)  # rounded thread, 0 in the grooves
    lit = height * (1.0 - 0.25 * offset)  # light from one side
    weft = 1.0 - 0.24 * (0.5 + 0.5 * np.cos(2 * np.pi * along / _WEFT_PERIODS + np.pi * thread + scene.weft_phase))
    streaks = 1.0 + 0.06 * (
        np.cos(2 * np.pi * 0.9 * along + scene.fibres[0, index])
        + np.cos(2 * np.pi * 1.9 * along + scene.fibres[1, index])
    )
    shade = 0.2 + 0.75 * lit * weft * streaks * scene.tints[index]
    return shade[:, :, None] * (255.0 * _DYE)


def _stripes_rotated(rng: np.random.Generator, scene: _Stripes, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A patch of the same weave turned 12-30 degrees about the patch centre."""
    size = scene.size
    alpha = _blob(rng, size, size * rng.uniform(0.09, 0.16), elongation=1.8)
    turn = rng.choice([-1.0, 1.0]) * rng.uniform(12.0, 30.0) * _DEG
    weights = alpha.sum()
    x, y = _grid(size)
    px, py = float((alpha * x).sum() / weights), float((alpha * y).sum() / weights)
    cos, sin = np.float32(np.cos(turn)), np.float32(np.sin(turn))
    # Sample the weave at positions turned the other way about the patch centre: the weave turns by ``turn``.
    sx = px + (x - px) * cos - (y - py) * sin
    sy = py + (x - px) * sin + (y - py) * cos
    patch = _render_stripes(scene, sx, sy)
    return clean + alpha[:, :, None] * (patch - clean), alpha >= 0.5


def _stripes_shifted(rng: np.random.Generator, scene: _Stripes, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A patch with the threads moved by half a period, or with a period 20-40 % shorter or longer."""
    size = scene.size
    alpha = _blob(rng, size, size * rng.uniform(0.07, 0.14), elongation=3.0)
    x, y = _grid(size)
    if rng.random() < 0.5:
        patch = _render_stripes(scene, x, y, phase_shift=0.5)
    else:
        scale = rng.uniform(0.65, 0.8) if rng.random() < 0.5 else rng.uniform(1.25, 1.5)
        weights = alpha.sum()
        px, py = float((alpha * x).sum() / weights), float((alpha * y).sum() / weights)
        patch = _render_stripes(scene, px + (x - px) / scale, py + (y - py) / scale)
    return clean + alpha[:, :, None] * (patch - clean), alpha >= 0.5


def _stripes_thin(rng: np.random.Generator, scene: _Stripes, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A thin line of 10-20 grey levels, lighter or darker, running roughly across the threads."""
    size = scene.size
    across = scene.angle - np.pi / 2 + rng.uniform(-25.0, 25.0) * _DEG  # y points down: threads run at -angle
    heading = -across if rng.random() < 0.5 else np.pi - across
    length = size * rng.uniform(0.2, 0.5)
    start = rng.uniform(0.1 * size, 0.9 * size, 2)
    alpha = _polyline(rng, size, start, heading, length)
    contrast = rng.choice([-1.0, 1.0]) * rng.uniform(10.0, 20.0)
    return clean + (contrast * alpha)[:, :, None], alpha >= 0.5


def _stripes_colour(rng: np.random.Generator, scene: _Stripes, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A patch dyed another hue (chroma turned 70-160 degrees in the CbCr plane) at the same luminance."""
    size = scene.size
    alpha = _blob(rng, size, size * rng.uniform(0.07, 0.14), elongation=2.0)
    red, green, blue = clean[:, :, 0], clean[:, :, 1], clean[:, :, 2]
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    cb, cr = 0.564 * (blue - luma), 0.713 * (red - luma)
    turn = rng.choice([-1.0, 1.0]) * rng.uniform(70.0, 160.0) * _DEG
    saturation = rng.uniform(0.8, 1.1)
    cos, sin = np.cos(turn) * saturation, np.sin(turn) * saturation
    cb, cr = cb * cos - cr * sin, cb * sin + cr * cos
    new_red, new_blue = luma + 1.403 * cr, luma + 1.773 * cb
    new_green = (luma - 0.299 * new_red - 0.114 * new_blue) / 0.587
    dyed = np.stack([new_red, new_green, new_blue], axis=2)
    return clean + alpha[:, :, None] * (dyed - clean), alpha >= 0.5


# ------------------------------------------------------------------------------------------------------ screw


def _draw_screw(rng: np.random.Generator, size: int) -> _Screw:
    """Draw a normal ``screw`` scene: <= 1.5 % translation and <= 0.8 degree rotation jitter, lighting."""
    centre = (size - 1) / 2 + size * rng.uniform(-0.015, 0.015, 2)
    marks = tuple(
        (rng.uniform(0.01, 0.03), rng.uniform(0.15, 0.45) * 256 / size, rng.uniform(0.0, 2 * np.pi)) for _ in range(3)
    )
    mottle = 1.0 + 0.012 * smooth_noise(rng, size, 7) + 0.006 * smooth_noise(rng, size, 23)
    return _Screw(
        size=size,
        centre=(float(centre[0]), float(centre[1])),
        angle=rng.uniform(-0.8, 0.8) * _DEG,
        thread_phase=rng.uniform(0.0, 1.0),
        marks=marks,
        background=mottle[:, :, None] * _BACKGROUND,
        capture=_draw_capture(rng, size),
    )


def _pitch(size: int) -> float:
    """Thread pitch in pixels."""
    return max(_MIN_PITCH, _PITCH * size)


def _screw_profile(scene: _Screw, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Silhouette radius of the shank, thread and tip along the axis on one side: ``(u, radius)``, pixels."""
    size = scene.size
    pitch = _pitch(size)
    u = np.arange(-0.45 * size, 0.45 * size, 0.25, dtype=np.float32)
    major, minor = _MAJOR_RADIUS * size, _MINOR_RADIUS * size
    crest = 1.0 - 2.0 * np.abs(np.mod(u / pitch + 0.25 * side + scene.thread_phase + 0.5, 1.0) - 0.5)
    threaded = minor + (major - minor) * crest
    damage = scene.damage
    if damage is not None and side in damage.sides:
        window = np.clip((damage.half_length - np.abs(u - damage.centre)) / (0.3 * pitch), 0.0, 1.0)
        threaded = np.minimum(threaded, major - damage.depth * (major - minor) * window)
    runout = np.clip((u - _THREAD_START * size) / pitch, 0.0, 1.0)
    radius = _SHANK_RADIUS * size + runout * (threaded - _SHANK_RADIUS * size)
    tip_start, tip_end = _TAPER_U[0] * size, _TAPER_U[1] * size
    taper = major * (tip_end - u) / (tip_end - tip_start)
    radius = np.minimum(radius, taper)
    radius[u < 0.5 * (_HEAD_U[0] + _HEAD_U[1]) * size] = -2.0  # the shank starts inside the head
    return u, radius


def _shaft_coverage(scene: _Screw, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of the shaft (shank, thread, tip) at local coordinates ``(u, v)``."""
    coverage = np.zeros_like(u)
    for side, where in ((-1, v < 0), (1, v >= 0)):
        lut_u, radius = _screw_profile(scene, side)
        slope = np.gradient(radius, lut_u)
        r = np.interp(u[where], lut_u, radius)
        g = np.interp(u[where], lut_u, slope)
        distance = (r - np.abs(v[where])) / np.sqrt(1.0 + g * g)
        coverage[where] = np.clip(0.5 + distance, 0.0, 1.0)
    broken = scene.tip_break
    if broken is not None:
        end = broken.position + broken.slant * v
        for amplitude, frequency, phase in broken.jag:
            end = end + amplitude * np.sin(frequency * v + phase)
        coverage *= np.clip(0.5 + (end - u), 0.0, 1.0)
    return coverage


def _shaft_shade(scene: _Screw, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Brightness of the turned, threaded steel shaft (before the steel colour)."""
    size = scene.size
    pitch = _pitch(size)
    across = np.clip(v / (_MAJOR_RADIUS * size), -1.0, 1.0)
    facing = np.sqrt(1.0 - across * across)
    shade = 0.28 + 0.5 * facing + 0.4 * np.exp(-(((across + 0.45) / 0.22) ** 2))
    helix = u / pitch + 0.25 * across + scene.thread_phase
    ridge = np.cos(2 * np.pi * helix) + 0.5 * np.sin(2 * np.pi * helix)  # flanks facing the light are brighter
    threaded = np.clip((u - _THREAD_START * size) / pitch, 0.0, 1.0)
    damage = scene.damage
    if damage is not None:
        window = np.clip((damage.half_length - np.abs(u - damage.centre)) / (0.3 * pitch), 0.0, 1.0)
        band = np.zeros_like(u)
        for side in damage.sides:
            band = np.maximum(band, _smoothstep(0.35, 0.8, side * across))
        scraped = damage.depth * window * band
        threaded = threaded * (1.0 - scraped)
        shade = shade * (1.0 + 0.12 * scraped)  # sheared crests are flat and shiny
    marks = sum(amplitude * np.cos(frequency * u + phase) for amplitude, frequency, phase in scene.marks)
    shade = shade * (1.0 + 0.2 * threaded * ridge + (1.0 - threaded) * marks)
    broken = scene.tip_break
    if broken is not None:
        gap = broken.position + broken.slant * v - u
        shade = shade * (1.0 - 0.3 * np.clip(1.0 - gap / (0.012 * size), 0.0, 1.0))  # dull fracture rim
    return shade


def _head(scene: _Screw, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hex head seen across a flat: anti-aliased coverage and brightness of its three faces."""
    size = scene.size
    left, right = _HEAD_U[0] * size, _HEAD_U[1] * size
    half_u, half_v, corner = (right - left) / 2, _HEAD_HALF_HEIGHT * size, _HEAD_CORNER * size
    qu = np.abs(u - (left + right) / 2) - (half_u - corner)
    qv = np.abs(v) - (half_v - corner)
    outside = np.hypot(np.maximum(qu, 0.0), np.maximum(qv, 0.0)) + np.minimum(np.maximum(qu, qv), 0.0) - corner
    coverage = np.clip(0.5 - outside, 0.0, 1.0)
    upper = np.clip(0.5 - (v + half_v / 2), 0.0, 1.0)
    lower = np.clip(0.5 + (v - half_v / 2), 0.0, 1.0)
    shade = 0.95 * upper + 0.62 * (1.0 - upper - lower) + 0.38 * lower
    shade = shade * (1.0 + 0.12 * (0.5 - (u - left) / (right - left)))  # lit from the left
    chamfer = np.clip((half_u - np.abs(u - (left + right) / 2)) / (0.014 * size), 0.0, 1.0)
    return coverage, shade * (0.72 + 0.28 * chamfer)


def _render_screw(scene: _Screw) -> np.ndarray:
    """Render the screw over the background; return RGB grey levels (float32)."""
    x, y = _grid(scene.size)
    cos, sin = np.float32(np.cos(scene.angle)), np.float32(np.sin(scene.angle))
    dx, dy = x - np.float32(scene.centre[0]), y - np.float32(scene.centre[1])
    u = dx * cos - dy * sin  # counter-clockwise on screen, where y points down
    v = dx * sin + dy * cos
    steel = 255.0 * _STEEL
    shaft = _shaft_coverage(scene, u, v)
    head, head_shade = _head(scene, u, v)
    strength, right, down, blur = _SHADOW
    size = scene.size
    offset = np.float32([[1, 0, right * size], [0, 1, down * size]])
    shadow = cv2.warpAffine(np.maximum(shaft, head), offset, (size, size), flags=cv2.INTER_LINEAR)
    shadow = cv2.GaussianBlur(shadow, (0, 0), blur * size)
    image = scene.background * (1.0 - strength * shadow)[:, :, None]
    image = image + shaft[:, :, None] * (_shaft_shade(scene, u, v)[:, :, None] * steel - image)
    return image + head[:, :, None] * (head_shade[:, :, None] * steel - image)


def _to_image(scene: _Screw, point: tuple[float, float]) -> np.ndarray:
    """Pixel position ``(x, y)`` of the local screw coordinates ``(u, v)``."""
    cos, sin = np.cos(scene.angle), np.sin(scene.angle)
    u, v = point
    return np.array([scene.centre[0] + u * cos + v * sin, scene.centre[1] - u * sin + v * cos])


def _screw_rotated(rng: np.random.Generator, scene: _Screw, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The whole screw turned by 6-15 degrees about its centre."""
    turn = rng.choice([-1.0, 1.0]) * rng.uniform(6.0, 15.0) * _DEG
    turned = _render_screw(replace(scene, angle=scene.angle + turn))
    return turned, np.zeros(clean.shape[:2], bool)


def _screw_thread(rng: np.random.Generator, scene: _Screw, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thread crests sheared off over 1.5-4 pitches on one or both sides."""
    size, pitch = scene.size, _pitch(scene.size)
    half_length = pitch * rng.uniform(0.75, 2.0)
    low, high = _THREAD_START * size + pitch + half_length, _TAPER_U[0] * size - half_length
    sides = ((-1,), (1,), (-1, 1))[int(rng.integers(3))]
    damage = _ThreadDamage(
        centre=rng.uniform(low, high), half_length=half_length, sides=sides, depth=rng.uniform(0.6, 1.0)
    )
    return _render_screw(replace(scene, damage=damage)), np.zeros(clean.shape[:2], bool)


def _screw_tip(rng: np.random.Generator, scene: _Screw, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tip broken off along a slanted, ragged fracture between the thread's end and the middle of the taper."""
    size, pitch = scene.size, _pitch(scene.size)
    tip_start, tip_end = _TAPER_U[0] * size, _TAPER_U[1] * size
    jag = tuple(
        (rng.uniform(0.2, 0.6) * size / 256, rng.uniform(0.25, 0.8) * 256 / size, rng.uniform(0.0, 2 * np.pi))
        for _ in range(2)
    )
    broken = _TipBreak(
        position=rng.uniform(tip_start - 2.5 * pitch, (tip_start + tip_end) / 2),
        slant=rng.uniform(-0.35, 0.35),
        jag=jag,
    )
    return _render_screw(replace(scene, tip_break=broken)), np.zeros(clean.shape[:2], bool)


def _screw_scratch(rng: np.random.Generator, scene: _Screw, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A thin scratch 12-25 grey levels lighter or darker on the head or the shaft, clipped to the part."""
    size = scene.size
    x, y = _grid(size)
    cos, sin = np.float32(np.cos(scene.angle)), np.float32(np.sin(scene.angle))
    dx, dy = x - np.float32(scene.centre[0]), y - np.float32(scene.centre[1])
    u, v = dx * cos - dy * sin, dx * sin + dy * cos
    head, _ = _head(scene, u, v)
    if rng.random() < 0.35:
        part = head
        start = (rng.uniform(_HEAD_U[0], _HEAD_U[1]) * size, rng.uniform(-0.7, 0.2) * _HEAD_HALF_HEIGHT * size)
        heading, length = rng.uniform(np.pi / 3, 2 * np.pi / 3), size * rng.uniform(0.05, 0.1)
    else:
        part = _shaft_coverage(scene, u, v) * (1.0 - head)
        start = (rng.uniform(_HEAD_U[1], 0.1) * size, rng.uniform(-0.8, 0.8) * _MINOR_RADIUS * size)
        heading, length = rng.uniform(-0.35, 0.35), size * rng.uniform(0.08, 0.18)
    direction = _to_image(scene, (np.cos(heading), np.sin(heading))) - _to_image(scene, (0.0, 0.0))
    stroke = _polyline(rng, size, _to_image(scene, start), float(np.arctan2(direction[1], direction[0])), length)
    alpha = stroke * part
    contrast = rng.choice([-1.0, 1.0]) * rng.uniform(12.0, 25.0)
    return clean + (contrast * alpha)[:, :, None], alpha >= 0.5


# ------------------------------------------------------------------------------------------------ public API

_Scene = _Stripes | _Screw
# A defect takes the generator, the scene and its rendering, and returns the defective rendering and the pixels
# that belong to the defect even where they happen to keep their value (further to those that change).
_Defect = Callable[..., tuple[np.ndarray, np.ndarray]]

_DRAW: dict[str, Callable[[np.random.Generator, int], _Scene]] = {"stripes": _draw_stripes, "screw": _draw_screw}
_DEFECTS: dict[str, dict[str, _Defect]] = {
    "stripes": {
        "rotated": _stripes_rotated,
        "shifted": _stripes_shifted,
        "thin": _stripes_thin,
        "colour": _stripes_colour,
    },
    "screw": {"rotated": _screw_rotated, "thread": _screw_thread, "tip": _screw_tip, "scratch": _screw_scratch},
}


def _scene(rng: np.random.Generator, category: str, size: int) -> tuple[_Scene, np.ndarray]:
    """Draw a normal scene of ``category``; return it and its noise-free rendering."""
    if category not in CATEGORIES:
        msg = f"Unknown oriented demo category {category!r}; valid categories are {list(CATEGORIES)}."
        raise ValueError(msg)
    scene = _DRAW[category](rng, size)
    if isinstance(scene, _Stripes):
        return scene, _render_stripes(scene, *_grid(size))
    return scene, _render_screw(scene)


def _fill_holes(region: np.ndarray) -> np.ndarray:
    """``region`` with every background pocket not connected to the image border added."""
    padded = np.pad(region.astype(np.uint8), 1)
    cv2.floodFill(padded, None, (0, 0), 1)
    return region | (padded[1:-1, 1:-1] == 0)


def normal_image(rng: np.random.Generator, category: str, size: int) -> np.ndarray:
    """Draw a normal image of ``category``.

    Args:
        rng: generator; consumed the same way as the first part of :func:`defect_image`.
        category: a key of :data:`CATEGORIES`.
        size: image side in pixels.

    Returns:
        ``(size, size, 3)`` uint8 RGB image.

    Raises:
        ValueError: unknown category.
    """
    scene, clean = _scene(rng, category, size)
    return scene.capture.record(clean)


def defect_image(rng: np.random.Generator, category: str, defect: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw a normal scene of ``category`` as :func:`normal_image` does, then a ``defect`` in it.

    The defective image is the same scene rendered with changed parameters under the same lighting and sensor
    noise, so it differs from ``normal_image`` (for a generator in the same starting state) exactly on the
    defect. A defect that would change fewer than ``max(12, 0.0004 * size**2)`` pixels is drawn again.

    Args:
        rng: generator.
        category: a key of :data:`CATEGORIES`.
        defect: one of ``CATEGORIES[category]``.
        size: image side in pixels.

    Returns:
        ``(image, mask)``: the uint8 RGB image and its uint8 0/255 ``(size, size)`` mask, 255 exactly where
        ``image`` differs from the normal image.

    Raises:
        ValueError: unknown category or defect.
        RuntimeError: no defect of sufficient size in 50 draws.
    """
    if category in CATEGORIES and defect not in CATEGORIES[category]:
        msg = f"Unknown defect {defect!r} for category {category!r}; valid defects are {list(CATEGORIES[category])}."
        raise ValueError(msg)
    scene, clean = _scene(rng, category, size)
    capture = scene.capture
    normal = capture.record(clean)
    lit = capture.expose(clean)
    needed = max(12.0, 0.0004 * size * size)
    for _ in range(_MAX_TRIES):
        defective, support = _DEFECTS[category][defect](rng, scene, clean)
        change = capture.expose(defective) - lit
        region = _fill_holes(support | (np.abs(change) >= _MIN_CHANGE).any(axis=2))
        if region.sum() >= needed:
            break
    else:
        msg = f"Could not draw a {defect!r} defect of sufficient size for category {category!r} at size {size}."
        raise RuntimeError(msg)
    image = np.where(region[:, :, None], capture.record(defective), normal)
    # A region pixel that rounding left unchanged moves by one grey level, so the mask is the whole region.
    same = region & (image == normal).all(axis=2)
    step = np.where(change.sum(axis=2) >= 0, 1, -1).astype(np.int16)
    base = normal.astype(np.int16)
    nudged = base + step[:, :, None]
    nudged = np.where((nudged < 0) | (nudged > 255), base - step[:, :, None], nudged)
    image[same] = nudged[same].astype(np.uint8)
    return image, changed_mask(normal, image)
