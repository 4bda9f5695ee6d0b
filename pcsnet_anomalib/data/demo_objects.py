"""Aligned object categories of the demo data: a machined metal ``plate`` and a printed circuit board (``pcb``).

The texture categories of :mod:`pcsnet_anomalib.data.demo` can be told apart from local statistics alone. These
categories add what the object categories of MVTec AD test: the same part photographed the same way in every
image, whose anomalies are structural (a missing, extra, misplaced or rotated part, a bent outline, a broken
trace) or subtle (a faint dent or scratch, a colour-only change), so that a detector needs the part's layout and
not only its surface texture.

Both objects are drawn procedurally, with anti-aliased sub-pixel OpenCV shapes, onto albedo, height and
shininess maps that a small shading model lights from one side (bevels, domes, contact shadows), so parts look
smooth and everything scales with the image size. Normal images differ only by nuisance: a pose jitter (about
+-2 px at 256 px, rotation up to 1 degree), a brightness gain of 0.95-1.05 with a slight illumination gradient,
sensor noise of about 2 grey levels and, on the plate, the angle of the bolt-head slots.

A defect image draws the normal scene first (consuming the generator exactly as :func:`normal_image` does), then
the defect as a change of the scene's parameters, and renders both versions with the same noise. Where the two
renderings differ by less than one grey level (the smooth tails of shading and contact shadows) the normal pixel
is kept, so the mask, exactly the set of pixels the defect changed, is free of rounding speckle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from itertools import pairwise
from typing import Any

import cv2
import numpy as np

from pcsnet_anomalib.data.drawing import changed_mask, smooth_noise

Point = tuple[float, float]
Colour = tuple[float, float, float]

_MAX_TRIES = 50
_LIGHT = np.array([-0.45, -0.55, 0.70]) / np.linalg.norm([-0.45, -0.55, 0.70])  # from the upper left
_HALFWAY = (_LIGHT + np.array([0.0, 0.0, 1.0])) / np.linalg.norm(_LIGHT + np.array([0.0, 0.0, 1.0]))  # camera above
_AMBIENT = 0.35


# --- geometry, in object coordinates (fractions of the image side, x to the right, y down) -------------------


def _rigid(angle: float, centre: Point, shift: Point = (0.0, 0.0)) -> np.ndarray:
    """2x3 matrix of ``p -> R(angle) (p - centre) + centre + shift``."""
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    offset = np.asarray(centre) + np.asarray(shift) - rotation @ np.asarray(centre)
    return np.hstack([rotation, offset[:, None]])


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 matrix of applying ``inner``, then ``outer``."""
    return outer[:, :2] @ inner + np.hstack([np.zeros((2, 2)), outer[:, 2:]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to an (N, 2) array of points."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def _circle(centre: Point, radius: float, vertices: int = 40) -> np.ndarray:
    """Regular polygon approximating a circle."""
    theta = np.linspace(0.0, 2 * np.pi, vertices, endpoint=False)
    return np.stack([centre[0] + radius * np.cos(theta), centre[1] + radius * np.sin(theta)], axis=1)


def _ellipse(centre: Point, half: Point, angle: float, vertices: int = 40) -> np.ndarray:
    """Polygon approximating an ellipse with semi-axes ``half`` rotated by ``angle``."""
    unit = _circle((0.0, 0.0), 1.0, vertices) * np.asarray(half)
    return _apply(_rigid(angle, (0.0, 0.0), centre), unit)


def _rect(centre: Point, half: Point, angle: float = 0.0) -> np.ndarray:
    """Rectangle with half-sizes ``half`` rotated by ``angle`` about its centre."""
    corners = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]) * np.asarray(half)
    return _apply(_rigid(angle, (0.0, 0.0), centre), corners)


def _rounded_rect(centre: Point, half: Point, radius: float, step: float = 0.01) -> np.ndarray:
    """Axis-aligned rectangle with rounded corners, with vertices at most ``step`` apart (so it can be warped)."""
    inner = np.asarray(half) - radius
    arcs = []
    for index, (sx, sy) in enumerate(((1, -1), (1, 1), (-1, 1), (-1, -1))):
        theta = np.linspace(-np.pi / 2, 0.0, 8) + index * np.pi / 2
        corner = np.asarray(centre) + inner * [sx, sy]
        arcs.append(corner + radius * np.stack([np.cos(theta), np.sin(theta)], axis=1))
    return _densify(np.concatenate(arcs), step)


def _stadium(centre: Point, half_length: float, radius: float, angle: float) -> np.ndarray:
    """Slot shape: two half circles ``2 * half_length`` apart joined by straight sides."""
    theta = np.linspace(-np.pi / 2, np.pi / 2, 20)
    right = np.stack([half_length + radius * np.cos(theta), radius * np.sin(theta)], axis=1)
    outline = np.concatenate([right, -right])
    return _apply(_rigid(angle, (0.0, 0.0), centre), outline)


def _densify(polygon: np.ndarray, step: float, closed: bool = True) -> np.ndarray:
    """Polygon (or open polyline) with extra vertices so that consecutive vertices are at most ``step`` apart."""
    points = []
    ends = np.roll(polygon, -1, axis=0) if closed else polygon[1:]
    for start, end in zip(polygon[: len(ends)], ends, strict=True):
        count = max(1, int(np.ceil(np.linalg.norm(end - start) / step)))
        points.append(start + (end - start) * np.arange(count)[:, None] / count)
    return np.concatenate(points if closed else [*points, polygon[-1:]])


def _stroke(points: np.ndarray, width: float, closed: bool = False) -> list[np.ndarray]:
    """Polygons of a polyline of ``width`` with round joins: one quad per segment and one disc per vertex."""
    if closed:
        points = np.concatenate([points, points[:1]])
    polygons = [_circle(tuple(point), width / 2, 16) for point in points]
    for start, end in pairwise(points):
        direction = (end - start) / max(float(np.linalg.norm(end - start)), 1e-9)
        normal = np.array([-direction[1], direction[0]]) * width / 2
        polygons.append(np.stack([start + normal, end + normal, end - normal, start - normal]))
    return polygons


def _at_least(pixels_at_256: float, minimum: float, size: int) -> float:
    """A length given in pixels of a 256 px image, as a fraction of the image side, but at least ``minimum`` px.

    Thin features (a scratch, a trace cut) would fade into anti-aliasing if scaled down to small images.
    """
    return max(pixels_at_256 * size / 256.0, minimum) / size


def _far_from(point: np.ndarray, radius: float, features: Sequence[tuple[float, float, float]]) -> bool:
    """True if a disc at ``point`` keeps a small margin from every ``(x, y, radius)`` feature disc."""
    return all(np.hypot(point[0] - x, point[1] - y) > radius + r + 0.03 for x, y, r in features)


# --- scene: nuisance parameters, and the rendering of albedo/height/shininess maps ---------------------------


@dataclass(frozen=True)
class _Patch:
    """Coverage in [0, 1] of a shape over the image window starting at (``top``, ``left``)."""

    top: int
    left: int
    alpha: np.ndarray

    @property
    def window(self) -> tuple[slice, slice]:
        """Row and column slices of the window in the image."""
        return slice(self.top, self.top + self.alpha.shape[0]), slice(self.left, self.left + self.alpha.shape[1])

    @classmethod
    def from_full(cls, coverage: np.ndarray) -> _Patch | None:
        """Crop a full-size uint8 coverage image to its non-zero part."""
        left, top, width, height = cv2.boundingRect(coverage)
        if width == 0:
            return None
        return cls(top, left, coverage[top : top + height, left : left + width].astype(np.float32) / 255.0)


@dataclass(frozen=True)
class _Scene:
    """Everything random about one photograph of the object except the defect."""

    size: int
    to_pixels: np.ndarray  # 2x3: object coordinates -> pixel coordinates (pose jitter included)
    lighting: np.ndarray  # (size, size, 1): brightness gain times illumination gradient
    noise: np.ndarray  # (size, size, 3): sensor noise in grey levels
    fields: dict[str, np.ndarray]  # category textures, (size, size, 3) albedo images

    def cover(self, polygons: Sequence[np.ndarray]) -> _Patch | None:
        """Anti-aliased coverage of the union of ``polygons`` (object coordinates); ``None`` if off the image."""
        pixels = [_apply(self.to_pixels, polygon) for polygon in polygons]
        every = np.concatenate(pixels)
        left, top = np.maximum(np.floor(every.min(axis=0)).astype(int) - 1, 0)
        right, bottom = np.minimum(np.ceil(every.max(axis=0)).astype(int) + 2, self.size)
        if right <= left or bottom <= top:
            return None
        canvas = np.zeros((bottom - top, right - left), np.uint8)
        for polygon in pixels:  # one call each: fillPoly fills overlapping contours even-odd
            fixed = np.rint((polygon - [left, top]) * 16).astype(np.int32)  # 4 bits of sub-pixel precision
            cv2.fillPoly(canvas, [fixed], 255, cv2.LINE_AA, shift=4)
        return _Patch(int(top), int(left), canvas.astype(np.float32) / 255.0)

    def text(self, lines: Sequence[tuple[str, Point, float]], motion: np.ndarray | None = None) -> _Patch | None:
        """Coverage of ``(text, bottom-left origin, letter height)`` labels, moved by ``motion`` and the pose."""
        size = self.size
        canvas = np.zeros((size, size), np.uint8)
        for text, origin, height in lines:
            scale = height * size / 22.0  # Hershey simplex capitals are about 22 units high at scale 1
            anchor = (round(origin[0] * size), round(origin[1] * size))
            cv2.putText(canvas, text, anchor, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, 1, cv2.LINE_AA)
        to_object = np.array([[1.0 / size, 0.0, 0.0], [0.0, 1.0 / size, 0.0]])
        matrix = self.to_pixels if motion is None else _compose(self.to_pixels, motion)
        warped = cv2.warpAffine(canvas, _compose(matrix, to_object), (size, size), flags=cv2.INTER_LINEAR)
        return _Patch.from_full(warped)

    def bump(self, centre: Point, sigma: float, amplitude: float) -> tuple[_Patch, np.ndarray]:
        """A Gaussian height bump (``sigma`` and ``amplitude`` as fractions of the image side) and its window."""
        cx, cy = _apply(self.to_pixels, np.array([centre]))[0]
        radius = 3.0 * sigma * self.size
        left, top = max(int(cx - radius), 0), max(int(cy - radius), 0)
        right, bottom = min(int(cx + radius) + 2, self.size), min(int(cy + radius) + 2, self.size)
        yy, xx = np.mgrid[top:bottom, left:right].astype(np.float32)
        spread = 2.0 * (sigma * self.size) ** 2
        lift = amplitude * self.size * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / spread)
        return _Patch(top, left, np.ones_like(lift)), lift


def _sample_scene(rng: np.random.Generator, size: int, fields: dict[str, np.ndarray]) -> _Scene:
    """Draw the pose jitter, lighting and sensor noise of one photograph."""
    shift = rng.uniform(-2.0, 2.0, 2) / 256.0
    angle = np.deg2rad(rng.uniform(-1.0, 1.0))
    gain = rng.uniform(0.95, 1.05)
    slope = rng.uniform(-0.06, 0.06, 2)
    noise = 1.2 * rng.standard_normal((size, size, 3), dtype=np.float32)
    noise += 1.6 * rng.standard_normal((size, size, 1), dtype=np.float32)  # mostly grey, as after demosaicing
    to_pixels = _compose(np.array([[size, 0.0, -0.5], [0.0, size, -0.5]]), _rigid(angle, (0.5, 0.5), shift))
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    lighting = gain * (1.0 + slope[0] * ramp[None, :] + slope[1] * ramp[:, None])
    return _Scene(size, to_pixels, lighting[:, :, None].astype(np.float32), noise, fields)


def _mottled(rng: np.random.Generator, size: int, colour: Colour, amount: float, cells: int) -> np.ndarray:
    """Albedo image of ``colour`` with smooth brightness variation of about +-``amount`` grey levels."""
    variation = amount * smooth_noise(rng, size, cells)
    return np.asarray(colour, np.float32) + variation[:, :, None]


def _shift_hue(colours: np.ndarray, angle: float, saturation: float) -> np.ndarray:
    """Rotate the chroma of RGB ``colours`` by ``angle`` and scale it, keeping the luma (BT.601) unchanged.

    Where the result would leave [0, 255], the chroma is scaled down just enough to stay inside.
    """
    red, green, blue = colours[..., 0], colours[..., 1], colours[..., 2]
    luma = np.clip(0.299 * red + 0.587 * green + 0.114 * blue, 0.0, 255.0)
    cos, sin = saturation * np.cos(angle), saturation * np.sin(angle)
    to_blue, to_red = blue - luma, red - luma
    new_blue, new_red = cos * to_blue - sin * to_red, sin * to_blue + cos * to_red
    chroma = np.stack([new_red, -(0.299 * new_red + 0.114 * new_blue) / 0.587, new_blue], axis=-1)
    room = np.where(chroma > 0, 255.0 - luma[..., None], luma[..., None]) / np.maximum(np.abs(chroma), 1e-6)
    return luma[..., None] + chroma * np.minimum(room.min(axis=-1, keepdims=True), 1.0)


class _Canvas:
    """Albedo (RGB), height (pixels) and shininess maps that the parts of an object are painted onto in order."""

    def __init__(self, albedo: np.ndarray) -> None:
        self.albedo = albedo.astype(np.float32, copy=True)
        self.height = np.zeros(albedo.shape[:2], np.float32)
        self.shine = np.zeros(albedo.shape[:2], np.float32)

    def paint(
        self,
        patch: _Patch | None,
        albedo: Colour | np.ndarray | None = None,
        *,
        height: float | np.ndarray | None = None,
        lift: float | np.ndarray = 0.0,
        shine: float | None = None,
        brighten: float = 0.0,
    ) -> None:
        """Blend a part in by its coverage.

        Args:
            patch: the part's coverage (nothing happens for ``None``).
            albedo: new colour, or a full-size albedo image to copy from; ``None`` keeps the colour.
            height: new absolute height in pixels, a number or an array of the patch's shape; ``None`` keeps it.
            lift: height added (pixels), a number or an array of the patch's shape.
            shine: new shininess (0 matte, 1 polished); ``None`` keeps it.
            brighten: grey levels added to the albedo.
        """
        if patch is None:
            return
        window, alpha = patch.window, patch.alpha
        colour = self.albedo[window]
        if albedo is not None:
            target = albedo[window] if isinstance(albedo, np.ndarray) else np.asarray(albedo, np.float32)
            colour += (target - colour) * alpha[:, :, None]
        if brighten:
            colour += brighten * alpha[:, :, None]
        level = self.height[window]
        if height is not None:
            level += (height - level) * alpha
        level += lift * alpha
        if shine is not None:
            gloss = self.shine[window]
            gloss += (shine - gloss) * alpha

    def recolour(self, patch: _Patch | None, angle: float, saturation: float) -> None:
        """Change the hue (and saturation) of the albedo under ``patch`` at unchanged luma."""
        if patch is None:
            return
        colour = self.albedo[patch.window]
        colour += (_shift_hue(colour, angle, saturation) - colour) * patch.alpha[:, :, None]

    def photograph(self, scene: _Scene) -> np.ndarray:
        """Light the maps from the upper left and add the scene's lighting and noise: float RGB grey levels."""
        size = scene.size
        height = cv2.GaussianBlur(self.height, (0, 0), max(0.6, size / 300.0))
        gx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
        gy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
        inverse_norm = 1.0 / np.sqrt(1.0 + gx * gx + gy * gy)
        lx, ly, lz = (float(value) for value in _LIGHT)
        lambert = np.maximum((lz - lx * gx - ly * gy) * inverse_norm, 0.0) * (1.0 / lz)  # 1 on flat ground
        hx, hy, hz = (float(value) for value in _HALFWAY)
        glint = np.clip(((hz - hx * gx - hy * gy) * inverse_norm - hz) * (1.0 / (1.0 - hz)), 0.0, 1.0)
        glint *= glint
        glint *= glint  # fourth power: a broad highlight
        hollow = cv2.GaussianBlur(height, (0, 0), 0.01 * size) - height  # contact shadows, shaded holes
        occlusion = 1.0 - 0.45 * np.clip(hollow * (1.0 / (0.012 * size)), 0.0, 1.0)
        shade = (_AMBIENT + (1.0 - _AMBIENT) * lambert) * occlusion
        image = self.albedo * shade[:, :, None]
        image += (255.0 * self.shine * glint)[:, :, None]
        return image * scene.lighting + scene.noise


# --- plate: a machined bracket with corner holes, a central slot, two slotted bolts and two rivets -----------

_PLATE_CENTRE = (0.5, 0.5)
_PLATE_HALF = (0.38, 0.27)
_PLATE_CORNER = 0.06
_PLATE_THICKNESS = 0.014
_CORNER_HOLES = tuple((0.5 + sx * 0.305, 0.5 + sy * 0.195, 0.03) for sx in (-1, 1) for sy in (-1, 1))
_SLOT_HALF_LENGTH = 0.1
_SLOT_RADIUS = 0.03
_BOLT_RADIUS = 0.045
_RIVET_RADIUS = 0.03
_METAL: Colour = (168.0, 171.0, 176.0)


@dataclass(frozen=True)
class _Fastener:
    """A slotted pan-head bolt (with washer) or a dome rivet."""

    kind: str  # "bolt" or "rivet"
    centre: Point
    radius: float
    slot_angle: float = 0.0


@dataclass(frozen=True)
class _Bend:
    """A corner folded up along a line (``kind="fold"``) or an edge pushed in (``kind="dent"``)."""

    kind: str
    origin: Point  # a point on the fold line, or the pushed point of the edge
    direction: Point  # unit vector: towards the folded corner, or the inward push
    amount: float  # fold angle (radians), or push depth (fraction of the image side)
    width: float  # extent of the pushed part of the edge (dent only)

    def warp(self, points: np.ndarray) -> np.ndarray:
        """Where the deformation moves ``points`` (object coordinates) as seen from above."""
        direction = np.asarray(self.direction)
        offset = points - np.asarray(self.origin)
        if self.kind == "fold":
            reach = np.maximum(offset @ direction, 0.0)
            return points - np.outer(reach * (1.0 - np.cos(self.amount)), direction)
        along = offset @ [-direction[1], direction[0]]
        across = offset @ direction
        weight = np.exp(-0.5 * (along / self.width) ** 2 - 0.5 * (across / (1.5 * self.width)) ** 2)
        return points + np.outer(self.amount * weight, direction)


@dataclass(frozen=True)
class _PlateLayout:
    """The parts of one plate; defects are changes of these parameters."""

    holes: tuple[tuple[float, float, float], ...]  # through-holes (x, y, radius), fastener holes included
    slot_centre: Point
    slot_angle: float
    fasteners: tuple[_Fastener, ...]
    bend: _Bend | None = None
    dent: tuple[float, float, float, float] | None = None  # x, y, sigma, depth / sigma: a shallow dent
    scratch: tuple[np.ndarray, float, float] | None = None  # polyline, width (px at 256), brightness change


def _plate_fields(rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
    """Dark cloth background and brushed aluminium (horizontal streaks)."""
    background = _mottled(rng, size, (36.0, 38.0, 43.0), 3.0, 6)
    metal = _mottled(rng, size, _METAL, 4.0, 5)
    streaks = rng.standard_normal((size, max(4, size // 12)), dtype=np.float32)
    metal += 3.5 * cv2.resize(streaks, (size, size), interpolation=cv2.INTER_LINEAR)[:, :, None]
    return {"background": background, "metal": metal}


def _plate_layout(rng: np.random.Generator) -> _PlateLayout:
    """The nominal plate; only the bolt-head slot angles are random (nuisance)."""
    bolts = tuple(
        _Fastener("bolt", (0.5, 0.5 + sy * 0.15), _BOLT_RADIUS, float(rng.uniform(0.0, np.pi))) for sy in (-1, 1)
    )
    rivets = tuple(_Fastener("rivet", (0.5 + sx * 0.225, 0.5), _RIVET_RADIUS) for sx in (-1, 1))
    fasteners = bolts + rivets
    holes = _CORNER_HOLES + tuple((*f.centre, 0.55 * f.radius) for f in fasteners)
    return _PlateLayout(holes, _PLATE_CENTRE, 0.0, fasteners)


def _plate_features(layout: _PlateLayout) -> list[tuple[float, float, float]]:
    """Discs covering every part on the plate, to keep new defects clear of them."""
    features = list(layout.holes)
    features += [(*f.centre, f.radius * (1.3 if f.kind == "bolt" else 1.0)) for f in layout.fasteners]
    for t in np.linspace(-1.0, 1.0, 5):
        x = layout.slot_centre[0] + t * _SLOT_HALF_LENGTH * np.cos(layout.slot_angle)
        y = layout.slot_centre[1] + t * _SLOT_HALF_LENGTH * np.sin(layout.slot_angle)
        features.append((x, y, _SLOT_RADIUS))
    return features


def _free_spot(
    rng: np.random.Generator, layout: _PlateLayout, radius: float, shape: np.ndarray | None = None
) -> np.ndarray:
    """A random place on the plate for discs of ``radius`` at ``shape`` (offsets; default one disc at 0).

    The discs keep clear of the plate's edge and of every part; the place is drawn by rejection.
    """
    shape = np.zeros((1, 2)) if shape is None else shape
    features = _plate_features(layout)
    low = np.asarray(_PLATE_CENTRE) - _PLATE_HALF + radius + 0.03 - shape.min(axis=0)
    high = np.asarray(_PLATE_CENTRE) + _PLATE_HALF - radius - 0.03 - shape.max(axis=0)
    for _ in range(10_000):
        centre = rng.uniform(low, high)
        if all(_far_from(centre + offset, radius, features) for offset in shape):
            return centre
    msg = f"No free place on the plate for a shape of extent {np.ptp(shape, axis=0)} and radius {radius}."
    raise RuntimeError(msg)


def _render_plate(scene: _Scene, layout: _PlateLayout) -> np.ndarray:
    """Render the plate on its background (float RGB grey levels, before quantisation)."""
    size = scene.size
    warp = layout.bend.warp if layout.bend is not None else lambda points: points
    background, metal = scene.fields["background"], scene.fields["metal"]

    canvas = _Canvas(background)
    plate = scene.cover([warp(_rounded_rect(_PLATE_CENTRE, _PLATE_HALF, _PLATE_CORNER))])
    canvas.paint(plate, metal, height=_PLATE_THICKNESS * size, shine=0.05)
    if layout.bend is not None and layout.bend.kind == "fold":
        _lift_fold(canvas, scene, layout.bend, plate)
    if layout.dent is not None:
        x, y, sigma, steepness = layout.dent
        sigma = max(sigma, 1.5 / size)
        patch, lift = scene.bump((x, y), sigma, -steepness * sigma)
        canvas.paint(patch, lift=lift)
    if layout.scratch is not None:
        points, width, change = layout.scratch
        width = _at_least(width, 1.0, size)
        canvas.paint(scene.cover(_stroke(points, width)), brighten=change)
    for x, y, radius in layout.holes:
        canvas.paint(scene.cover([warp(_circle((x, y), radius))]), background, height=0.0, shine=0.0)
    slot = _stadium(layout.slot_centre, _SLOT_HALF_LENGTH, _SLOT_RADIUS, layout.slot_angle)
    canvas.paint(scene.cover([warp(slot)]), background, height=0.0, shine=0.0)
    for fastener in layout.fasteners:
        _paint_fastener(canvas, scene, fastener)
    return canvas.photograph(scene)


def _lift_fold(canvas: _Canvas, scene: _Scene, bend: _Bend, plate: _Patch | None) -> None:
    """Tilt the folded corner of the plate: its height grows linearly beyond the fold line."""
    if plate is None:
        return
    top, left = plate.top, plate.left
    rows, cols = plate.alpha.shape
    yy, xx = np.mgrid[top : top + rows, left : left + cols].astype(np.float32)
    origin = _apply(scene.to_pixels, np.array([bend.origin]))[0]
    direction = scene.to_pixels[:, :2] @ np.asarray(bend.direction) / scene.size
    reach = np.maximum((xx - origin[0]) * direction[0] + (yy - origin[1]) * direction[1], 0.0)
    canvas.paint(plate, lift=reach * np.tan(bend.amount))


def _paint_fastener(canvas: _Canvas, scene: _Scene, fastener: _Fastener) -> None:
    """A washer and a slotted dome head (bolt), or a polished dome (rivet), resting on the plate's top face."""
    size, centre, radius = scene.size, fastener.centre, fastener.radius
    seat = _PLATE_THICKNESS * size
    if fastener.kind == "bolt":
        seat += 0.004 * size
        canvas.paint(scene.cover([_circle(centre, 1.3 * radius)]), (182.0, 182.0, 180.0), height=seat, shine=0.2)
    head = scene.cover([_circle(centre, radius)])
    if head is None:
        return
    cx, cy = _apply(scene.to_pixels, np.array([centre]))[0]
    rows, cols = head.alpha.shape
    yy, xx = np.mgrid[head.top : head.top + rows, head.left : head.left + cols].astype(np.float32)
    dome = np.sqrt(np.clip(1.0 - ((xx - cx) ** 2 + (yy - cy) ** 2) / (radius * size) ** 2, 0.0, 1.0))
    if fastener.kind == "bolt":
        canvas.paint(head, (142.0, 143.0, 146.0), height=seat + (0.006 + 0.012 * dome) * size, shine=0.35)
        groove = _rect(centre, (0.85 * radius, 0.13 * radius), fastener.slot_angle)
        canvas.paint(scene.cover([groove]), (58.0, 58.0, 60.0), lift=-0.01 * size, shine=0.0)
    else:
        canvas.paint(head, (190.0, 186.0, 176.0), height=seat + (0.003 + 0.012 * dome) * size, shine=0.5)


def _plate_missing(rng: np.random.Generator, layout: _PlateLayout) -> _PlateLayout:
    """One bolt or rivet is missing: its hole shows."""
    gone = int(rng.integers(len(layout.fasteners)))
    return replace(layout, fasteners=tuple(f for i, f in enumerate(layout.fasteners) if i != gone))


def _plate_extra(rng: np.random.Generator, layout: _PlateLayout) -> _PlateLayout:
    """An extra hole or rivet where the drawing has none."""
    if rng.random() < 0.5:
        radius = float(rng.uniform(0.018, 0.032))
        x, y = _free_spot(rng, layout, radius)
        return replace(layout, holes=(*layout.holes, (float(x), float(y), radius)))
    radius = float(rng.uniform(0.022, 0.032))
    x, y = _free_spot(rng, layout, radius)
    return replace(layout, fasteners=(*layout.fasteners, _Fastener("rivet", (float(x), float(y)), radius)))


def _plate_misplaced(rng: np.random.Generator, layout: _PlateLayout) -> _PlateLayout:
    """A bolt or rivet shifted off its hole by several pixels, or the central slot turned or moved."""
    if rng.random() < 0.6:
        index = int(rng.integers(len(layout.fasteners)))
        fastener = layout.fasteners[index]
        heading = rng.uniform(0.0, 2 * np.pi)
        distance = rng.uniform(0.35, 0.7) * fastener.radius
        centre = (fastener.centre[0] + distance * np.cos(heading), fastener.centre[1] + distance * np.sin(heading))
        moved = replace(fastener, centre=centre)
        return replace(layout, fasteners=tuple(moved if i == index else f for i, f in enumerate(layout.fasteners)))
    if rng.random() < 0.5:
        return replace(layout, slot_angle=float(rng.choice([-1.0, 1.0]) * np.deg2rad(rng.uniform(8.0, 25.0))))
    heading = rng.uniform(0.0, 2 * np.pi)
    distance = rng.uniform(0.015, 0.03)
    centre = (0.5 + distance * np.cos(heading), 0.5 + distance * np.sin(heading))
    return replace(layout, slot_centre=centre)


def _plate_bent(rng: np.random.Generator, layout: _PlateLayout) -> _PlateLayout:
    """A corner folded up along a diagonal line, or a dent pushed into an edge."""
    half = np.asarray(_PLATE_HALF)
    if rng.random() < 0.6:
        signs = np.array([rng.choice([-1.0, 1.0]), rng.choice([-1.0, 1.0])])
        heading = np.arctan2(signs[1] * half[1], signs[0] * half[0]) + rng.uniform(-0.35, 0.35)
        direction = np.array([np.cos(heading), np.sin(heading)])
        corner = np.asarray(_PLATE_CENTRE) + signs * (half - _PLATE_CORNER * (1 - np.sqrt(0.5)))
        origin = corner - direction * rng.uniform(0.06, 0.12)
        angle = float(np.deg2rad(rng.uniform(18.0, 38.0)))
        return replace(layout, bend=_Bend("fold", tuple(origin), tuple(direction), angle, 0.0))
    side = int(rng.integers(4))
    normal = np.array([(1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0)][side])  # inward push direction
    tangent = np.array([-normal[1], normal[0]])
    extent = float(np.abs(tangent) @ (half - _PLATE_CORNER - 0.03))
    point = np.asarray(_PLATE_CENTRE) - normal * (np.abs(normal) @ half) + tangent * rng.uniform(-extent, extent)
    bend = _Bend("dent", tuple(point), tuple(normal), float(rng.uniform(0.012, 0.028)), float(rng.uniform(0.02, 0.04)))
    return replace(layout, bend=bend)


def _plate_faint(rng: np.random.Generator, layout: _PlateLayout) -> _PlateLayout:
    """A shallow dent or a thin scratch on the plate, of low contrast (about 10-20 grey levels)."""
    if rng.random() < 0.5:
        sigma = float(rng.uniform(0.012, 0.022))
        x, y = _free_spot(rng, layout, 2.5 * sigma)
        return replace(layout, dent=(float(x), float(y), sigma, float(rng.uniform(0.18, 0.3))))
    length = float(rng.uniform(0.08, 0.18))
    bends = rng.uniform(0.0, np.pi) + np.cumsum(rng.uniform(-0.25, 0.25, 3))
    steps = np.stack([np.cos(bends), np.sin(bends)], axis=1) * length / 3
    shape = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)]) - steps.sum(axis=0) / 2
    points = _free_spot(rng, layout, 0.005, _densify(shape, 0.01, closed=False)) + shape
    width = float(rng.uniform(1.0, 2.0))
    change = float(rng.choice([-1.0, 1.0]) * rng.uniform(10.0, 20.0))
    return replace(layout, scratch=(points, width, change))


# --- pcb: a board section with a QFP and an SOIC chip, passives, gold pads, traces and silkscreen ------------

_BOARD: Colour = (30.0, 98.0, 58.0)
_TRACE: Colour = (52.0, 140.0, 74.0)
_GOLD: Colour = (212.0, 170.0, 78.0)
_TIN: Colour = (196.0, 196.0, 190.0)
_SILK: Colour = (226.0, 228.0, 218.0)
_TRACE_WIDTH = 0.017
_VIAS = ((0.58, 0.42, 0.016), (0.90, 0.40, 0.016), (0.10, 0.60, 0.016), (0.32, 0.90, 0.016), (0.62, 0.10, 0.016))
_VIAS += ((0.92, 0.92, 0.045),)  # mounting hole
_TRACES = tuple(
    np.array(points)
    for points in (
        [(0.47, 0.38), (0.64, 0.38), (0.694, 0.326)],
        [(0.47, 0.42), (0.58, 0.42)],
        [(0.47, 0.46), (0.595, 0.46), (0.655, 0.52)],
        [(0.47, 0.50), (0.52, 0.50), (0.60, 0.58), (0.60, 0.64), (0.655, 0.64)],
        [(0.782, 0.325), (0.782, 0.48), (0.745, 0.517)],
        [(0.826, 0.325), (0.826, 0.36), (0.866, 0.40), (0.90, 0.40), (0.90, 0.535)],
        [(0.17, 0.50), (0.12, 0.50), (0.10, 0.52), (0.10, 0.60)],
        [(0.24, 0.57), (0.24, 0.76)],
        [(0.32, 0.57), (0.32, 0.90)],
        [(0.40, 0.57), (0.40, 0.70), (0.435, 0.735), (0.435, 0.76)],
        [(0.32, 0.27), (0.32, 0.15), (0.37, 0.10), (0.62, 0.10)],
        [(0.40, 0.27), (0.40, 0.21), (0.455, 0.155), (0.694, 0.155)],
        [(0.24, 0.27), (0.24, 0.14), (0.14, 0.04), (0.14, -0.05)],
        [(0.17, 0.34), (-0.05, 0.34)],
        [(0.525, 0.76), (0.60, 0.76), (0.66, 0.82), (1.05, 0.82)],
        [(0.90, 0.625), (0.90, 0.70), (0.96, 0.76), (1.05, 0.76)],
        [(0.745, 0.64), (0.80, 0.64), (0.84, 0.68), (0.84, 1.05)],
        [(0.15, 0.76), (0.08, 0.76), (0.08, 1.05)],
    )
)


@dataclass(frozen=True)
class _Component:
    """A chip (pins on ``pins_x`` and/or ``pins_y`` sides) or a two-terminal passive, on its pads."""

    label: str
    kind: str  # "chip", "resistor" or "capacitor"
    centre: Point
    half: Point  # body half-size before ``angle``
    angle: float = 0.0  # nominal orientation
    pins_x: int = 0  # pins on each of the left and right sides
    pins_y: int = 0  # pins on each of the top and bottom sides
    marking: str = ""
    present: bool = True
    motion: tuple[float, float, float] = (0.0, 0.0, 0.0)  # defect: rotation (radians) and shift

    def placed(self) -> np.ndarray:
        """2x3 matrix from the component's own frame (centre at 0, nominal angle) to where it actually sits."""
        turn, dx, dy = self.motion
        nominal = _rigid(self.angle, (0.0, 0.0), self.centre)
        return _compose(_rigid(turn, self.centre, (dx, dy)), nominal)

    def nominal(self) -> np.ndarray:
        """2x3 matrix from the component's own frame to where its pads are."""
        return _rigid(self.angle, (0.0, 0.0), self.centre)

    def rows(self, pads: bool) -> list[list[tuple[Point, Point]]]:
        """(centre, half-size) of a chip's pads (``pads``) or pins, side by side in order, in its own frame."""
        hx, hy = self.half
        reach, (long, wide) = (0.036, (0.032, 0.012)) if pads else (0.027, (0.028, 0.0085))
        rows = []
        for side in (-1, 1):
            if self.pins_x:
                offsets = np.linspace(-0.7, 0.7, self.pins_x) * hy
                rows.append([((side * (hx + reach), float(o)), (long, wide)) for o in offsets])
            if self.pins_y:
                offsets = np.linspace(-0.66, 0.66, self.pins_y) * hx
                rows.append([((float(o), side * (hy + reach)), (wide, long)) for o in offsets])
        return rows

    def terminals(self, pads: bool) -> list[tuple[Point, Point]]:
        """(centre, half-size) of each pad (``pads``) or pin/end cap, in the component's own frame."""
        if self.kind == "chip":
            return [terminal for row in self.rows(pads) for terminal in row]
        hx, hy = self.half
        if pads:
            return [((side * (hx + 0.006), 0.0), (0.022, 0.026)) for side in (-1, 1)]
        return [((side * (hx - 0.009), 0.0), (0.009, hy)) for side in (-1, 1)]


@dataclass(frozen=True)
class _BoardLayout:
    """The parts of one board section; defects are changes of these parameters."""

    components: tuple[_Component, ...]
    cut: tuple[Point, float, float] | None = None  # point on a trace, the trace's direction, gap (px at 256)
    solder: np.ndarray | None = None  # outline of a solder bridge or ball
    recolour: tuple[str, tuple[np.ndarray, ...], float, float] | None = None  # "pads"/"body", outlines, hue, chroma


_COMPONENTS = (
    _Component("U1", "chip", (0.32, 0.42), (0.12, 0.12), pins_x=5, pins_y=5, marking="MCU32"),
    _Component("U2", "chip", (0.76, 0.24), (0.10, 0.055), pins_y=4, marking="LM358"),
    _Component("R1", "resistor", (0.70, 0.52), (0.04, 0.02)),
    _Component("R2", "resistor", (0.70, 0.64), (0.04, 0.02)),
    _Component("C1", "capacitor", (0.90, 0.58), (0.04, 0.02), angle=np.pi / 2),
    _Component("C2", "capacitor", (0.195, 0.76), (0.04, 0.02)),
    _Component("R3", "resistor", (0.48, 0.76), (0.04, 0.02)),
)
_LABELS = (("U1", (0.10, 0.25)), ("U2", (0.87, 0.12)), ("R1", (0.79, 0.55)), ("R2", (0.675, 0.72)))
_LABELS += (("C1", (0.935, 0.70)), ("C2", (0.16, 0.835)), ("R3", (0.46, 0.835)))


def _pcb_fields(rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
    """Solder-mask green with a faint mottle, and the lighter green of copper under the mask."""
    mottle = smooth_noise(rng, size, 7)[:, :, None]
    board = np.asarray(_BOARD, np.float32) * (1.0 + 0.06 * mottle)
    trace = np.asarray(_TRACE, np.float32) * (1.0 + 0.05 * mottle)
    return {"board": board, "trace": trace}


def _pcb_layout(_rng: np.random.Generator) -> _BoardLayout:
    """The nominal board: nothing about its parts is random."""
    return _BoardLayout(_COMPONENTS)


def _render_pcb(scene: _Scene, layout: _BoardLayout) -> np.ndarray:
    """Render the board section (float RGB grey levels, before quantisation)."""
    size = scene.size
    board = scene.fields["board"]
    canvas = _Canvas(board)
    artwork = _artwork()
    canvas.paint(scene.cover(artwork["traces"]), scene.fields["trace"], lift=0.004 * size)
    if layout.cut is not None:
        point, angle, gap = layout.cut
        gap_rect = _rect(point, (_at_least(gap, 1.5, size) / 2, _TRACE_WIDTH), angle)
        canvas.paint(scene.cover([gap_rect]), board, height=0.0)
    canvas.paint(scene.cover(artwork["silk"]), _SILK, lift=0.002 * size)
    canvas.paint(scene.text([(text, origin, 0.032) for text, origin in _LABELS]), _SILK, lift=0.002 * size)
    canvas.paint(scene.cover(artwork["rings"]), _GOLD, lift=0.002 * size, shine=0.3)
    canvas.paint(scene.cover(artwork["drills"]), (14.0, 16.0, 15.0), height=-0.01 * size, shine=0.0)
    canvas.paint(scene.cover(artwork["pads"]), _GOLD, lift=0.002 * size, shine=0.3)
    if layout.recolour is not None and layout.recolour[0] == "pads":
        canvas.recolour(scene.cover(layout.recolour[1]), *layout.recolour[2:])
    for component in layout.components:
        if component.present:
            _paint_component(canvas, scene, component)
    if layout.recolour is not None and layout.recolour[0] == "body":
        canvas.recolour(scene.cover(layout.recolour[1]), *layout.recolour[2:])
    if layout.solder is not None:
        blob = scene.cover([layout.solder])
        if blob is not None:
            canvas.paint(blob, _TIN, lift=0.007 * size * np.sqrt(blob.alpha), shine=0.6)
    return canvas.photograph(scene)


def _pin_one(component: _Component) -> Point:
    """Silkscreen dot next to pin 1 of a chip."""
    hx, hy = component.half
    return component.centre[0] - hx - 0.025, component.centre[1] - hy - 0.025


def _pads(component: _Component) -> list[np.ndarray]:
    """Outlines of a component's pads (which stay where the drawing puts them)."""
    return [_apply(component.nominal(), _rect(c, h)) for c, h in component.terminals(pads=True)]


@cache
def _artwork() -> dict[str, list[np.ndarray]]:
    """Outlines of the board's fixed features (object coordinates): traces, silkscreen, vias and pads."""
    silk = [_circle(_pin_one(c), 0.009) for c in _COMPONENTS if c.kind == "chip"]
    for component in _COMPONENTS:
        if component.kind != "chip":
            outline = _rect((0.0, 0.0), (component.half[0] + 0.04, component.half[1] + 0.018))
            silk += _stroke(_apply(component.nominal(), outline), 0.006, closed=True)
    return {
        "traces": [polygon for points in _TRACES for polygon in _stroke(points, _TRACE_WIDTH)],
        "silk": silk,
        "rings": [_circle((x, y), radius) for x, y, radius in _VIAS],
        "drills": [_circle((x, y), 0.45 * radius) for x, y, radius in _VIAS],
        "pads": [pad for component in _COMPONENTS for pad in _pads(component)],
    }


def _paint_component(canvas: _Canvas, scene: _Scene, component: _Component) -> None:
    """Pins (or end caps), body, and the chip's pin-1 dimple and marking, where the component actually sits."""
    size, placed = scene.size, component.placed()
    body = scene.cover([_apply(placed, _rect((0.0, 0.0), component.half))])
    terminals = [_apply(placed, _rect(c, h)) for c, h in component.terminals(pads=False)]
    if component.kind == "chip":
        canvas.paint(scene.cover(terminals), _TIN, lift=0.004 * size, shine=0.5)
        canvas.paint(body, (36.0, 36.0, 40.0), height=0.024 * size, shine=0.08)
        hx, hy = component.half
        dimple = _circle((-hx + 0.025, -hy + 0.025), 0.012)
        canvas.paint(scene.cover([_apply(placed, dimple)]), (52.0, 52.0, 57.0), lift=-0.002 * size)
        origin = (component.centre[0] - 0.55 * hx, component.centre[1] + 0.012)
        lines = [(component.marking, origin, 0.022 if hy > 0.08 else 0.018)]
        motion = _compose(placed, np.linalg.inv(np.vstack([component.nominal(), [0, 0, 1]]))[:2])
        canvas.paint(scene.text(lines, motion), (96.0, 96.0, 102.0))
        return
    colour = (26.0, 26.0, 28.0) if component.kind == "resistor" else (176.0, 150.0, 112.0)
    canvas.paint(body, colour, height=0.012 * size, shine=0.1)
    canvas.paint(scene.cover(terminals), _TIN, height=0.012 * size, shine=0.5)


def _pick(rng: np.random.Generator, layout: _BoardLayout) -> tuple[int, _Component]:
    """A random component and its index."""
    index = int(rng.integers(len(layout.components)))
    return index, layout.components[index]


def _with(layout: _BoardLayout, index: int, component: _Component) -> _BoardLayout:
    """``layout`` with component ``index`` replaced."""
    components = tuple(component if i == index else c for i, c in enumerate(layout.components))
    return replace(layout, components=components)


def _pcb_missing(rng: np.random.Generator, layout: _BoardLayout) -> _BoardLayout:
    """A component is missing: its bare pads show."""
    index, component = _pick(rng, layout)
    return _with(layout, index, replace(component, present=False))


def _pcb_rotated(rng: np.random.Generator, layout: _BoardLayout) -> _BoardLayout:
    """A component turned on its pads (10-90 degrees; the square chip 10-35) or shifted off them."""
    index, component = _pick(rng, layout)
    if rng.random() < 0.65:
        largest = 35.0 if component.pins_x and component.pins_y else 90.0
        turn = float(rng.choice([-1.0, 1.0]) * np.deg2rad(rng.uniform(10.0, largest)))
        return _with(layout, index, replace(component, motion=(turn, 0.0, 0.0)))
    heading = rng.uniform(0.0, 2 * np.pi)
    distance = rng.uniform(0.02, 0.04)
    motion = (0.0, float(distance * np.cos(heading)), float(distance * np.sin(heading)))
    return _with(layout, index, replace(component, motion=motion))


def _pcb_extra(rng: np.random.Generator, layout: _BoardLayout) -> _BoardLayout:
    """A solder bridge across two neighbouring pins of a chip, or a stray solder ball on the board."""
    if rng.random() < 0.7:
        chips = [c for c in layout.components if c.kind == "chip"]
        chip = chips[int(rng.integers(len(chips)))]
        rows = chip.rows(pads=True)
        row = rows[int(rng.integers(len(rows)))]
        first = int(rng.integers(len(row) - 1))
        (x0, y0), half = row[first]
        (x1, y1), _ = row[first + 1]
        across = float(rng.uniform(0.5, 0.9)) * max(half)
        along = 0.5 * float(np.hypot(x1 - x0, y1 - y0)) + float(rng.uniform(0.6, 1.0)) * min(half)
        angle = float(np.arctan2(y1 - y0, x1 - x0))
        outline = _ellipse(((x0 + x1) / 2, (y0 + y1) / 2), (along, across), angle, 24)
        outline *= 1.0 + 0.08 * rng.uniform(-1.0, 1.0, (24, 1))
        return replace(layout, solder=_apply(chip.nominal(), outline))
    radius = float(rng.uniform(0.008, 0.016))
    for _ in range(10_000):
        centre = rng.uniform(0.05, 0.95, 2)
        if all(np.any(np.abs(centre - c.centre) > _footprint(c) + 0.03) for c in layout.components):
            return replace(layout, solder=_circle(tuple(centre), radius, 20))
    msg = "No free place on the board for a solder ball."
    raise RuntimeError(msg)


def _footprint(component: _Component) -> np.ndarray:
    """Half-size of the axis-aligned box around a component and its pads (nominal place)."""
    corners = [*_pads(component), _apply(component.nominal(), _rect((0.0, 0.0), component.half))]
    return np.abs(np.concatenate(corners) - component.centre).max(axis=0)


def _pcb_cut(rng: np.random.Generator, layout: _BoardLayout) -> _BoardLayout:
    """A trace broken by a gap of 2-4 px (at 256 px), away from its pads, vias and bends."""
    vertices = np.concatenate(_TRACES)
    vias = np.array([(x, y) for x, y, _ in _VIAS])
    for _ in range(10_000):
        points = _TRACES[int(rng.integers(len(_TRACES)))]
        segment = int(rng.integers(len(points) - 1))
        start, end = points[segment], points[segment + 1]
        where = start + (end - start) * rng.uniform(0.0, 1.0)
        inside = bool(np.all((where > 0.03) & (where < 0.97)))
        clear = (
            np.linalg.norm(vertices - where, axis=1).min() > 0.035 and np.linalg.norm(vias - where, axis=1).min() > 0.05
        )
        if inside and clear:
            angle = float(np.arctan2(end[1] - start[1], end[0] - start[0]))
            gap = float(rng.uniform(2.0, 4.0))
            return replace(layout, cut=((float(where[0]), float(where[1])), angle, gap))
    msg = "No place on a trace for a cut."
    raise RuntimeError(msg)


def _pcb_discolour(rng: np.random.Generator, layout: _BoardLayout) -> _BoardLayout:
    """Some pads, or a capacitor's body, change hue at about the same luminance (oxidised or overheated)."""
    _, component = _pick(rng, layout)
    hue = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.35, 0.8) * np.pi)
    chroma = float(rng.uniform(0.8, 1.4))
    if component.kind == "capacitor" and rng.random() < 0.5:
        body = _apply(component.nominal(), _rect((0.0, 0.0), component.half))
        return replace(layout, recolour=("body", (body,), hue, chroma))
    if component.kind == "chip":
        rows = component.rows(pads=True)
        pads = rows[int(rng.integers(len(rows)))]
    else:
        pads = component.terminals(pads=True)
        pads = pads[int(rng.integers(len(pads))) :] if rng.random() < 0.5 else pads
    outlines = tuple(_apply(component.nominal(), _rect(centre, half)) for centre, half in pads)
    return replace(layout, recolour=("pads", outlines, hue, chroma))


# --- categories ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Category:
    """How to draw a category: its textures, its nominal layout, its renderer and its defects."""

    fields: Callable[[np.random.Generator, int], dict[str, np.ndarray]]
    layout: Callable[[np.random.Generator], Any]
    render: Callable[[_Scene, Any], np.ndarray]  # float RGB, before quantisation
    defects: dict[str, Callable[[np.random.Generator, Any], Any]]


_KINDS = {
    "plate": _Category(
        _plate_fields,
        _plate_layout,
        _render_plate,
        {
            "missing": _plate_missing,
            "extra": _plate_extra,
            "misplaced": _plate_misplaced,
            "bent": _plate_bent,
            "faint": _plate_faint,
        },
    ),
    "pcb": _Category(
        _pcb_fields,
        _pcb_layout,
        _render_pcb,
        {
            "missing": _pcb_missing,
            "rotated": _pcb_rotated,
            "extra": _pcb_extra,
            "cut": _pcb_cut,
            "discolour": _pcb_discolour,
        },
    ),
}
CATEGORIES: dict[str, tuple[str, ...]] = {name: tuple(kind.defects) for name, kind in _KINDS.items()}


def _quantise(image: np.ndarray) -> np.ndarray:
    """Round a rendered float image to uint8."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _category(category: str) -> _Category:
    """The drawing recipe of ``category``; raises ``ValueError`` naming the valid ones."""
    if category not in _KINDS:
        msg = f"Unknown object category {category!r}; valid categories are {list(CATEGORIES)}."
        raise ValueError(msg)
    return _KINDS[category]


def _draw_scene(rng: np.random.Generator, kind: _Category, size: int) -> tuple[_Scene, Any]:
    """Draw everything about a normal image: textures, pose, lighting, noise and nuisance layout parameters."""
    fields = kind.fields(rng, size)
    return _sample_scene(rng, size, fields), kind.layout(rng)


def normal_image(rng: np.random.Generator, category: str, size: int) -> np.ndarray:
    """A defect-free image of ``category``: the aligned object with nuisance variation only.

    Args:
        rng: generator; the image is a deterministic function of its state.
        category: ``"plate"`` or ``"pcb"``.
        size: image side in pixels.

    Returns:
        ``(size, size, 3)`` uint8 RGB image.

    Raises:
        ValueError: unknown category.
    """
    kind = _category(category)
    scene, layout = _draw_scene(rng, kind, size)
    return _quantise(kind.render(scene, layout))


def defect_image(rng: np.random.Generator, category: str, defect: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An image of ``category`` with one ``defect``, and its exact ground-truth mask.

    The generator is first used exactly as :func:`normal_image` uses it, so the same state gives the same
    normal scene; the defect is drawn after it (again, with further draws, while it changes fewer than
    ``max(12, 0.0004 * size**2)`` pixels).

    Args:
        rng: generator; the result is a deterministic function of its state.
        category: ``"plate"`` or ``"pcb"``.
        defect: one of ``CATEGORIES[category]``.
        size: image side in pixels.

    Returns:
        ``(image, mask)``: the ``(size, size, 3)`` uint8 RGB image and a ``(size, size)`` uint8 mask that is 255
        exactly where the image differs from the normal image of the same generator state, else 0.

    Raises:
        ValueError: unknown category or defect.
        RuntimeError: no draw of the defect changed enough pixels.
    """
    kind = _category(category)
    if defect not in kind.defects:
        msg = f"Unknown defect {defect!r} for {category!r}; valid defects are {list(CATEGORIES[category])}."
        raise ValueError(msg)
    scene, layout = _draw_scene(rng, kind, size)
    rendered = kind.render(scene, layout)
    normal = _quantise(rendered)
    least = max(12.0, 0.0004 * size**2)
    for _ in range(_MAX_TRIES):
        changed = kind.render(scene, kind.defects[defect](rng, layout))
        # Below one grey level the defect's smooth tails (shading, contact shadows) would flip the rounding of
        # scattered pixels and speckle the mask: there the normal image is kept.
        visible = (np.abs(changed - rendered) >= 1.0).any(axis=2)
        image = np.where(visible[:, :, None], _quantise(changed), normal)
        mask = changed_mask(normal, image)
        if np.count_nonzero(mask) >= least:
            return image, mask
    msg = f"Could not draw a {defect!r} defect on {category!r} changing at least {least:.0f} pixels at size {size}."
    raise RuntimeError(msg)
