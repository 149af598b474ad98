"""Synthetic driving-like scenes: the offline default data that the quickstart trains and is benchmarked on.

A scene is two independent draws:

* a :class:`Layout` (where things are): a horizon, a perspective road with sidewalks, building
  facades receding along both sides, and cars, persons, poles, signs, trees and bushes standing on
  the ground plane, sized by their distance and painted far to near;
* an :class:`Appearance` (what each class looks like): per class a random base colour from the
  whole RGB cube, a pattern (stripes, checker, speckle, windows, gradient, ...) in a second colour,
  and a little pixel noise.

Appearance depends only on the scene's appearance parameters and the class, never on the layout, so
one appearance can be rendered on two layouts; the validation split does exactly that, which makes
"copy the exemplar's appearance onto the target layout" the only way to reproduce its ground truth.
Class colours are deliberately implausible (a purple road is as likely as a grey one) so no model
can get them from a prior over street scenes.

Geometry is in normalised image coordinates (x as a fraction of the width, y of the height) so a
layout renders at any size; everything is vectorised numpy.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from amlight.data.registry import DatasetMetadata

FORMAT_VERSION = 2  # 2: class colours drawn around a per-class prior (appearance_spread)

SKY, ROAD, SIDEWALK, BUILDING, VEGETATION, CAR, PERSON, POLE, TERRAIN, SIGN = range(10)

CLASS_NAMES = (
    "sky", "road", "sidewalk", "building", "vegetation", "car", "person", "pole", "terrain", "traffic sign",
)
# Label colours for colour maps and visualisation (Cityscapes' where it has the class); they say
# nothing about how a class looks in a synthetic image.
CLASS_COLORS = (
    (70, 130, 180),
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (107, 142, 35),
    (0, 0, 142),
    (220, 20, 60),
    (153, 153, 153),
    (152, 251, 152),
    (220, 220, 0),
)

SYNTHETIC_METADATA = DatasetMetadata(
    name="synthetic", class_names=CLASS_NAMES, colors=CLASS_COLORS, ignore_index=255
)

# The parameters a generated folder is identified by (manifest.json); `progress` is not one of them.
# appearance_spread: std (0-255 units) of each class's per-scene base colour around its class colour;
# 256 or more draws it uniformly over the whole colour space (no class prior at all).
DEFAULT_PARAMS: dict[str, int] = {
    "seed": 0, "num_train": 2000, "num_val_groups": 32, "height": 64, "width": 64, "appearance_spread": 64,
}

# Classes every validation layout must show, so that each large target region has an exemplar
# region of the same class to copy from.
VAL_REQUIRED_CLASSES = (SKY, ROAD, BUILDING, CAR)
# Two layouts of one validation group may agree on at most this fraction of pixels.
VAL_MAX_AGREEMENT = 0.6

_SPLIT_IDS = {"train": 0, "val": 1}


# --------------------------------------------------------------------------------------------------
# Layout


@dataclass(frozen=True)
class Shape:
    """One primitive of one class.

    kind "rect": params (x0, y0, x1, y1); "ellipse": (cx, cy, rx, ry); "facade": (lateral, z_near,
    z_far, height) in metres, the side wall of a building along the road. ``depth`` is the distance
    from the camera in metres; farther shapes are painted first.
    """

    cls: int
    kind: str
    params: tuple[float, ...]
    depth: float


@dataclass(frozen=True)
class Layout:
    """Where everything is. Ground geometry is a pinhole camera over a flat road.

    A ground point ``z`` metres ahead lies ``d = focal * cam_height / z`` (fraction of the image
    height) below the horizon, and one metre there spans ``d / cam_height`` image heights; lateral
    positions are metres from the road centre line.
    """

    horizon: float
    vanish_x: float
    focal: float
    cam_height: float
    cam_lateral: float
    curve: float
    road_half_width: float
    sidewalk_left: float
    sidewalk_right: float
    aspect: float  # height / width of the image the layout was sampled for
    shapes: tuple[Shape, ...]

    def ground_d(self, z):
        """How far below the horizon (fraction of the image height) the ground ``z`` metres ahead is."""
        return self.focal * self.cam_height / np.asarray(z, dtype=np.float64)

    def center_x(self, d):
        """x of the road centre line at ``d`` below the horizon."""
        d = np.asarray(d, dtype=np.float64)
        dmax = 1.0 - self.horizon
        # The bend shifts far rows sideways and leaves the bottom row alone, so the road curves
        # away from the camera; near rows keep the straight-road perspective.
        bend = self.curve * (1.0 - np.clip(d / dmax, 0.0, 1.0)) ** 2
        return self.vanish_x + bend - self.cam_lateral * d / self.cam_height * self.aspect

    def project(self, z: float, lateral: float, height: float = 0.0) -> tuple[float, float, float]:
        """(x, y, image heights per metre) of the point ``height`` metres above the ground at (z, lateral)."""
        d = float(self.ground_d(z))
        ppm = d / self.cam_height
        x = float(self.center_x(d)) + lateral * ppm * self.aspect
        return x, self.horizon + d - height * ppm, ppm


def _rect(layout: Layout, cls: int, z: float, lateral: float, half_width: float, bottom: float, top: float) -> Shape:
    """An upright rectangle facing the camera, in metres: ``lateral`` ± ``half_width``, heights bottom..top."""
    x, _, ppm = layout.project(z, lateral)
    y_ground = layout.horizon + float(layout.ground_d(z))
    hw = half_width * ppm * layout.aspect
    return Shape(cls, "rect", (x - hw, y_ground - top * ppm, x + hw, y_ground - bottom * ppm), z)


def _ellipse(layout: Layout, cls: int, z: float, lateral: float, height: float, rx: float, ry: float) -> Shape:
    x, y, ppm = layout.project(z, lateral, height)
    return Shape(cls, "ellipse", (x, y, rx * ppm * layout.aspect, ry * ppm), z)


def _sample_z(rng: np.random.Generator, layout: Layout, near: float = 0.95, power: float = 1.6) -> float:
    """Depth of a ground object: from just below the bottom edge to near the horizon.

    ``power`` > 1 favours distant (small) objects, so a few large ones dominate and many small ones
    fill in, as in a real street.
    """
    dmax = 1.0 - layout.horizon
    d = dmax * rng.uniform(0.12, near) ** power
    return float(layout.focal * layout.cam_height / d)


def sample_layout(rng: np.random.Generator, height: int, width: int) -> Layout:
    """A random street layout (normalised coordinates, so it renders at any size)."""
    aspect = height / width
    hw = rng.uniform(2.5, 5.5)
    sidewalks = [0.0 if rng.random() < 0.12 else rng.uniform(1.5, 4.0) for _ in range(2)]
    base = Layout(
        horizon=rng.uniform(0.3, 0.55),
        vanish_x=rng.uniform(0.25, 0.75),
        focal=rng.uniform(0.8, 1.3),
        cam_height=rng.uniform(1.4, 2.4),
        cam_lateral=rng.uniform(-0.5, 0.5) * hw,
        curve=rng.uniform(-0.25, 0.25),
        road_half_width=hw,
        sidewalk_left=sidewalks[0],
        sidewalk_right=sidewalks[1],
        aspect=aspect,
        shapes=(),
    )
    shapes: list[Shape] = []

    def side_edge(side: int) -> float:
        """Lateral (metres, unsigned) of the outer edge of the sidewalk on ``side`` (-1 left, +1 right)."""
        return hw + (base.sidewalk_left if side < 0 else base.sidewalk_right)

    # Buildings: runs of facades along each side, near to far, the last one reaching the horizon.
    for side in (-1, 1):
        if rng.random() < 0.1:
            continue
        z = rng.uniform(1.0, 12.0)
        # Blocks along one side share a typical height: independent heights read as a saw blade.
        street_height = rng.uniform(6.0, 25.0)
        for i in range(12):
            length = rng.uniform(6.0, 30.0)
            z_far = z + length if i < 11 and z + length < 150.0 else 1e4
            setback = rng.uniform(0.0, 3.0)
            lateral = side * (side_edge(side) + setback)
            shapes.append(Shape(BUILDING, "facade", (lateral, z, z_far, street_height * rng.uniform(0.7, 1.3)), z_far))
            if z_far >= 1e4:
                break
            z = z_far + (rng.uniform(3.0, 15.0) if rng.random() < 0.25 else 0.0)

    # Trees and bushes between the sidewalk and the facades.
    for _ in range(rng.integers(1, 6)):
        side = int(rng.choice((-1, 1)))
        z = _sample_z(rng, base, power=1.1)
        lateral = side * (side_edge(side) + rng.uniform(-0.5, 2.5))
        trunk = rng.uniform(1.5, 3.5)
        r = rng.uniform(1.2, 3.2)
        shapes.append(_rect(base, VEGETATION, z, lateral, rng.uniform(0.12, 0.25), 0.0, trunk + r * 0.3))
        shapes.append(_ellipse(base, VEGETATION, z, lateral, trunk + 0.8 * r, r, r * rng.uniform(0.8, 1.3)))
    for _ in range(rng.integers(0, 5)):
        side = int(rng.choice((-1, 1)))
        z = _sample_z(rng, base, power=1.1)
        lateral = side * (side_edge(side) + rng.uniform(0.0, 2.0))
        ry = rng.uniform(0.5, 1.3)
        shapes.append(_ellipse(base, VEGETATION, z, lateral, 0.3 * ry, rng.uniform(0.8, 2.5), ry))

    # Poles at the sidewalk's outer edge, some carrying a sign.
    for _ in range(rng.integers(2, 6)):
        side = int(rng.choice((-1, 1)))
        z = _sample_z(rng, base, power=1.1)
        lateral = side * (side_edge(side) - rng.uniform(0.2, 0.5))
        pole_h = rng.uniform(3.5, 9.0)
        shapes.append(_rect(base, POLE, z, lateral, rng.uniform(0.08, 0.16), 0.0, pole_h))
        if rng.random() < 0.6:
            size = rng.uniform(0.5, 0.9)
            at = min(pole_h, rng.uniform(2.2, 3.5))
            # Slightly nearer than its pole so the painter's order puts it in front.
            if rng.random() < 0.5:
                shapes.append(_rect(base, SIGN, z - 0.01, lateral, size / 2, at - size, at))
            else:
                shapes.append(_ellipse(base, SIGN, z - 0.01, lateral, at - size / 2, size / 2, size / 2))

    # Persons, mostly on the sidewalks, now and then crossing.
    for _ in range(rng.integers(2, 7)):
        side = int(rng.choice((-1, 1)))
        z = _sample_z(rng, base)
        if rng.random() < 0.15:
            lateral = rng.uniform(-hw, hw)
        else:
            walk = side_edge(side) - hw
            lateral = side * (hw + (rng.uniform(0.2, 0.9) * walk if walk > 0 else rng.uniform(0.3, 2.0)))
        tall = rng.uniform(1.55, 1.95)
        wide = rng.uniform(0.22, 0.3)
        shapes.append(_rect(base, PERSON, z, lateral, wide * 0.7, 0.0, tall * 0.5))
        shapes.append(_rect(base, PERSON, z, lateral, wide, tall * 0.48, tall * 0.87))
        shapes.append(_ellipse(base, PERSON, z, lateral, tall * 0.93, 0.12, 0.14))

    # Cars in the lanes and parked at the kerb; vans now and then.
    for _ in range(rng.integers(3, 8)):
        z = _sample_z(rng, base)
        if rng.random() < 0.3:
            lateral = float(rng.choice((-1, 1))) * (hw - 1.0)
        else:
            lateral = rng.uniform(-hw + 1.0, hw - 1.0)
        van = rng.random() < 0.15
        half = rng.uniform(1.1, 1.25) if van else rng.uniform(0.8, 1.0)
        tall = rng.uniform(2.0, 2.6) if van else rng.uniform(1.3, 1.6)
        waist = 0.75 if van else rng.uniform(0.5, 0.62)
        shapes.append(_rect(base, CAR, z, lateral, half, 0.0, tall * waist))
        shapes.append(_rect(base, CAR, z, lateral, half * (0.95 if van else rng.uniform(0.7, 0.85)),
                            tall * waist - 0.01, tall))

    return replace(base, shapes=tuple(shapes))


# --------------------------------------------------------------------------------------------------
# Label rendering


def _pixel_span(lo: float, hi: float, n: int) -> tuple[int, int] | None:
    """Pixel index range [a, b) whose centres fall in [lo, hi), at least one pixel wide.

    Thin shapes (a far pole) would otherwise fall between pixel centres and vanish; the minimum width
    keeps every shape whose centre is in the frame visible.
    """
    a = int(np.floor(lo * n + 0.5))
    b = int(np.floor(hi * n + 0.5))
    if b <= a:
        a = int(np.floor((lo + hi) / 2 * n))
        b = a + 1
    a, b = max(a, 0), min(b, n)
    return (a, b) if b > a else None


def _draw_rect(labels: np.ndarray, cls: int, params: tuple[float, ...]) -> None:
    h, w = labels.shape
    x0, y0, x1, y1 = params
    cols, rows = _pixel_span(x0, x1, w), _pixel_span(y0, y1, h)
    if cols and rows:
        labels[rows[0]:rows[1], cols[0]:cols[1]] = cls


def _draw_ellipse(labels: np.ndarray, cls: int, params: tuple[float, ...]) -> None:
    h, w = labels.shape
    cx, cy, rx, ry = params
    cols, rows = _pixel_span(cx - rx, cx + rx, w), _pixel_span(cy - ry, cy + ry, h)
    if not (cols and rows):
        return
    xs = (np.arange(cols[0], cols[1]) + 0.5) / w
    ys = (np.arange(rows[0], rows[1]) + 0.5) / h
    # Radii at least half a pixel, so a small far blob stays a pixel rather than nothing.
    rx, ry = max(rx, 0.5 / w), max(ry, 0.5 / h)
    inside = ((xs[None, :] - cx) / rx) ** 2 + ((ys[:, None] - cy) / ry) ** 2 <= 1.0
    labels[rows[0]:rows[1], cols[0]:cols[1]][inside] = cls


def _draw_facade(labels: np.ndarray, layout: Layout, cls: int, params: tuple[float, ...]) -> None:
    h, w = labels.shape
    lateral, z_near, z_far, height = params
    d = np.linspace(float(layout.ground_d(z_far)), float(layout.ground_d(z_near)), 96)
    x = layout.center_x(d) + lateral * d / layout.cam_height * layout.aspect
    # The wall's foot runs monotonically away from the vanishing point; a strong bend could wiggle
    # it, and np.interp needs increasing sample points.
    if lateral < 0:
        xp, dp = np.minimum.accumulate(x)[::-1], d[::-1]
    else:
        xp, dp = np.maximum.accumulate(x), d
    cols = _pixel_span(float(xp.min()), float(xp.max()), w)
    if cols is None:
        return
    xs = (np.arange(cols[0], cols[1]) + 0.5) / w
    d_col = np.interp(xs, xp, dp)
    foot = layout.horizon + d_col
    top = layout.horizon + d_col * (1.0 - height / layout.cam_height)
    ys = (np.arange(h) + 0.5) / h
    inside = (ys[:, None] >= top[None, :]) & (ys[:, None] < foot[None, :])
    labels[:, cols[0]:cols[1]][inside] = cls


def render_labels(layout: Layout, height: int, width: int) -> np.ndarray:
    """The label map (H, W) uint8 of ``layout``: ground first, then facades, then objects far to near."""
    labels = np.full((height, width), SKY, dtype=np.uint8)
    ys = (np.arange(height) + 0.5) / height
    xs = (np.arange(width) + 0.5) / width
    below = ys > layout.horizon
    if below.any():
        d = (ys[below] - layout.horizon)[:, None]
        ppm = d / layout.cam_height
        lateral = (xs[None, :] - layout.center_x(d)) / (ppm * layout.aspect)
        hw = layout.road_half_width
        ground = np.full(lateral.shape, TERRAIN, dtype=np.uint8)
        ground[(lateral >= -hw - layout.sidewalk_left) & (lateral <= hw + layout.sidewalk_right)] = SIDEWALK
        ground[np.abs(lateral) <= hw] = ROAD
        labels[below] = ground

    # Facades stand behind everything else on the street (they are its outer walls), so they go
    # first whatever their depth; among themselves and among objects, far before near.
    order = sorted(range(len(layout.shapes)),
                   key=lambda i: (layout.shapes[i].kind != "facade", -layout.shapes[i].depth, i))
    for i in order:
        shape = layout.shapes[i]
        if shape.kind == "rect":
            _draw_rect(labels, shape.cls, shape.params)
        elif shape.kind == "ellipse":
            _draw_ellipse(labels, shape.cls, shape.params)
        elif shape.kind == "facade":
            _draw_facade(labels, layout, shape.cls, shape.params)
        else:
            raise ValueError(f"unknown shape kind {shape.kind!r}")
    return labels


# --------------------------------------------------------------------------------------------------
# Appearance

_PATTERNS: dict[int, tuple[str, ...]] = {
    SKY: ("gradient", "gradient", "plain", "clouds"),
    ROAD: ("plain", "speckle", "checker", "dstripes", "hstripes"),
    SIDEWALK: ("checker", "hstripes", "vstripes", "speckle"),
    BUILDING: ("windows", "windows", "windows", "vstripes", "hstripes", "checker"),
    VEGETATION: ("speckle", "blobs", "blobs", "checker"),
    CAR: ("plain", "hstripes", "vstripes", "checker"),
    # Thin classes get no vertical stripes: a person two pixels wide would show only one of them.
    PERSON: ("plain", "plain", "hstripes"),
    POLE: ("plain", "hstripes"),
    TERRAIN: ("speckle", "blobs", "plain", "dstripes"),
    SIGN: ("plain", "checker"),
}
_GENERIC_PATTERNS = ("plain", "hstripes", "vstripes", "checker", "speckle", "blobs")
_RANDOM_FIELDS = ("speckle", "blobs", "clouds")
_SMALL_CLASSES = (CAR, PERSON, POLE, SIGN)


@dataclass(frozen=True)
class Appearance:
    """What each class looks like, independent of any layout.

    Per class: ``base`` and ``second`` colour (RGB), a ``pattern`` mixing them, its cell size
    ``scale`` (fraction of the image height; at least 2 pixels when rendered) and ``phase`` (x, y
    offsets as fractions of a cell). ``noise`` is the pixel noise sigma, ``seed`` seeds the random
    fields (speckle, blobs, noise).
    """

    base: tuple[tuple[int, int, int], ...]
    second: tuple[tuple[int, int, int], ...]
    pattern: tuple[str, ...]
    scale: tuple[float, ...]
    phase: tuple[tuple[float, float], ...]
    noise: float
    seed: int

    @property
    def num_classes(self) -> int:
        return len(self.base)


def sample_appearance(
    rng: np.random.Generator, num_classes: int = len(CLASS_NAMES), spread: int = DEFAULT_PARAMS["appearance_spread"]
) -> Appearance:
    """Random per-class colours and patterns, drawn per scene.

    Each class's base colour is its class colour plus Gaussian noise of std ``spread`` per channel
    (uniform over the colour space when spread >= 256). Why a prior: with no prior at all, a model
    trained from scratch for minutes on a CPU cannot show the layout in its samples (the best guess
    for every region is the same grey); with it the layout shows early, while the per-scene deviation
    (std 64 by default, about a quarter of the range) is still only recoverable from the exemplar.
    """
    base, second, pattern, scale, phase = [], [], [], [], []
    for cls in range(num_classes):
        kind = str(rng.choice(_PATTERNS.get(cls, _GENERIC_PATTERNS)))
        if spread >= 256:
            b = rng.integers(0, 256, 3)
        else:
            prior = np.asarray(CLASS_COLORS[cls % len(CLASS_COLORS)], dtype=np.float64)
            b = np.clip(np.round(prior + rng.normal(0.0, spread, 3)), 0, 255).astype(int)
        s = rng.integers(0, 256, 3)
        # The pattern colour lies a moderate step from the base towards a random colour: strong
        # enough to see, weak enough that the class's mean colour stays well defined. A gradient
        # is weighted unevenly by how much of it a layout shows, and a random field averages over
        # few cells in a small region, so those get smaller steps.
        if kind == "gradient":
            step = rng.uniform(20.0, 40.0)
        elif kind in _RANDOM_FIELDS:
            step = rng.uniform(25.0, 50.0)
        else:
            step = rng.uniform(30.0, 70.0)
        delta = (s - b).astype(np.float64)
        delta *= min(1.0, step / max(np.abs(delta).max(), 1.0))
        s = np.clip(np.round(b + delta), 0, 255).astype(int)
        base.append(tuple(int(v) for v in b))
        second.append(tuple(int(v) for v in s))
        pattern.append(kind)
        # Objects a few pixels across would show a single stripe of a coarse pattern; keep theirs fine.
        scale.append(float(rng.uniform(2.0, 3.0 if cls in _SMALL_CLASSES else 4.5) / 64.0))
        phase.append((float(rng.random()), float(rng.random())))
    return Appearance(
        base=tuple(base), second=tuple(second), pattern=tuple(pattern), scale=tuple(scale),
        phase=tuple(phase), noise=float(rng.uniform(1.0, 4.0)), seed=int(rng.integers(0, 2**31)),
    )


def _value_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Smooth random field in [0, 1]: a coarse random grid, bilinearly interpolated."""
    gh, gw = height // cell + 2, width // cell + 2
    grid = rng.random((gh, gw))
    y = np.arange(height) / cell
    x = np.arange(width) / cell
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    g00 = grid[y0][:, x0]
    g01 = grid[y0][:, x0 + 1]
    g10 = grid[y0 + 1][:, x0]
    g11 = grid[y0 + 1][:, x0 + 1]
    return (g00 * (1 - fx) + g01 * fx) * (1 - fy) + (g10 * (1 - fx) + g11 * fx) * fy


def _pattern(appearance: Appearance, cls: int, height: int, width: int) -> np.ndarray:
    """Weight (H, W) in [0, 1] of the class's second colour."""
    kind = appearance.pattern[cls]
    cell = max(2, int(round(appearance.scale[cls] * height)))
    ox = int(appearance.phase[cls][0] * 2 * cell)
    oy = int(appearance.phase[cls][1] * 2 * cell)
    yy = np.arange(height)[:, None] + oy
    xx = np.arange(width)[None, :] + ox
    rng = np.random.default_rng([appearance.seed, cls])
    if kind == "plain":
        return np.zeros((height, width))
    if kind == "hstripes":
        return np.broadcast_to((yy // cell) % 2, (height, width)).astype(np.float64)
    if kind == "vstripes":
        return np.broadcast_to((xx // cell) % 2, (height, width)).astype(np.float64)
    if kind == "dstripes":
        # Measured along x + y a stripe of `cell` is only cell/sqrt(2) thick; widen it.
        return (((xx + yy) // (cell + 1)) % 2).astype(np.float64)
    if kind == "checker":
        return (((xx // cell) + (yy // cell)) % 2).astype(np.float64)
    if kind == "speckle":
        # Grey levels rather than on/off and small cells: a small region still averages many
        # independent cells, so its mean colour stays close to the class's.
        cell = min(cell, 3)
        blocks = rng.random((height // cell + 3, width // cell + 3))
        return blocks[(yy[:, 0] // cell) % blocks.shape[0]][:, (xx[0] // cell) % blocks.shape[1]]
    if kind == "blobs":
        return _value_noise(rng, height, width, min(cell, 3) + 1)
    if kind == "clouds":
        field = _value_noise(rng, height, width, 2 * cell)
        return np.clip((field - 0.5) * 2.5 + 0.5, 0.0, 1.0)
    if kind == "gradient":
        # Saturates a third of the way down: the sky's top is the second colour, the rest the base.
        return np.broadcast_to(np.clip(1.0 - np.arange(height)[:, None] / (0.35 * height), 0.0, 1.0),
                               (height, width)).astype(np.float64)
    if kind == "windows":
        gap = max(2, cell // 2 + 1)
        return (((xx % (cell + gap)) < cell) & ((yy % (cell + gap)) < cell)).astype(np.float64)
    raise ValueError(f"unknown pattern {kind!r}")


def class_texture(appearance: Appearance, cls: int, height: int, width: int) -> np.ndarray:
    """The class's appearance over the whole frame, (H, W, 3) float, before noise."""
    base = np.asarray(appearance.base[cls], dtype=np.float64)
    second = np.asarray(appearance.second[cls], dtype=np.float64)
    return base + _pattern(appearance, cls, height, width)[..., None] * (second - base)


def render_scene(layout: Layout, appearance: Appearance, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (H, W, 3), labels uint8 (H, W)): each pixel coloured by its own class's appearance."""
    labels = render_labels(layout, height, width)
    return paint(labels, appearance), labels


def paint(labels: np.ndarray, appearance: Appearance) -> np.ndarray:
    """Colour a label map with ``appearance``: the image whose ground truth labels are ``labels``."""
    height, width = labels.shape
    present = np.unique(labels)
    if present.max(initial=0) >= appearance.num_classes:
        raise ValueError(f"label {int(present.max())} has no appearance ({appearance.num_classes} classes)")
    image = np.zeros((height, width, 3), dtype=np.float64)
    for cls in present:
        mask = labels == cls
        image[mask] = class_texture(appearance, int(cls), height, width)[mask]
    noise = np.random.default_rng([appearance.seed, 1 << 20]).normal(0.0, appearance.noise, image.shape)
    return np.clip(np.round(image + noise), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Dataset files


def _scene_rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    # Each scene's randomness depends only on (seed, split, index, stream), so any scene can be
    # regenerated alone and the order of generation does not matter.
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_IDS[split], index, stream]))


def _class_pixels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]


def _sample_val_group(seed: int, group: int, height: int, width: int,
                      spread: int = DEFAULT_PARAMS["appearance_spread"]) -> tuple[Appearance, Layout, Layout]:
    """One appearance and two substantially different layouts that both show the required classes.

    Prefers pairs whose two label maps hold exactly the same classes, so that every region in either
    target has a same-class region in the exemplar; falls back to pairs sharing the required classes.
    """
    num_classes = len(CLASS_NAMES)
    appearance = sample_appearance(_scene_rng(seed, "val", group, 0), num_classes, spread)
    rng = _scene_rng(seed, "val", group, 1)
    min_pixels = max(4, int(0.004 * height * width))
    fallback = None
    for _ in range(200):
        la, lb = sample_layout(rng, height, width), sample_layout(rng, height, width)
        a, b = render_labels(la, height, width), render_labels(lb, height, width)
        ca, cb = _class_pixels(a, num_classes), _class_pixels(b, num_classes)
        if any(ca[c] < min_pixels or cb[c] < min_pixels for c in VAL_REQUIRED_CLASSES):
            continue
        if (a == b).mean() > VAL_MAX_AGREEMENT:
            continue
        if np.array_equal(ca > 0, cb > 0):
            return appearance, la, lb
        fallback = fallback or (appearance, la, lb)
    if fallback is None:
        raise RuntimeError(f"could not sample a validation pair for group {group} (seed {seed})")
    return fallback


def _save_png(array: np.ndarray, path: Path) -> None:
    # No pnginfo and a fixed compression level: the bytes depend only on the pixels.
    Image.fromarray(array).save(path, format="PNG", compress_level=6)


def _canonical_params(params: dict[str, Any]) -> dict[str, int]:
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise TypeError(f"unknown synthetic dataset parameter(s): {', '.join(unknown)}; "
                        f"known: {', '.join(DEFAULT_PARAMS)}")
    merged = {**DEFAULT_PARAMS, **params}
    for key, value in merged.items():
        if isinstance(value, bool) or int(value) != value:
            raise ValueError(f"synthetic dataset parameter {key} must be an integer, got {value!r}")
        merged[key] = int(value)
    for key in ("num_train", "num_val_groups"):
        if merged[key] < 0:
            raise ValueError(f"{key} must be >= 0, got {merged[key]}")
    for key in ("height", "width"):
        if merged[key] < 16:
            raise ValueError(f"{key} must be at least 16 pixels, got {merged[key]}")
    return merged


def _manifest(params: dict[str, int]) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "generator": "amlight.data.synthetic",
        "params": params,
        "classes": list(CLASS_NAMES),
        "counts": {
            "train": params["num_train"],
            "val_images": 2 * params["num_val_groups"],
            "val_pairs": 2 * params["num_val_groups"],
        },
    }


def _write_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def generate_synthetic_dataset(
    out: str | Path,
    seed: int = 0,
    num_train: int = 2000,
    num_val_groups: int = 32,
    height: int = 64,
    width: int = 64,
    progress: bool = True,
    appearance_spread: int = DEFAULT_PARAMS["appearance_spread"],
) -> dict[str, Any]:
    """Write the dataset into ``out`` (which must not exist or be empty); return a summary.

    Not atomic on its own: use :func:`ensure_synthetic_dataset` for a folder other code relies on.
    """
    from tqdm.auto import tqdm

    params = _canonical_params(dict(seed=seed, num_train=num_train, num_val_groups=num_val_groups,
                                    height=height, width=width, appearance_spread=appearance_spread))
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not empty; generate into a new folder "
                              "(or use ensure_synthetic_dataset, which leaves a complete one alone)")
    start = time.perf_counter()
    h, w = params["height"], params["width"]
    for split in ("train", "val"):
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        (out / split / "labels").mkdir(parents=True, exist_ok=True)
    meta = SYNTHETIC_METADATA
    classes = {"names": list(meta.class_names), "colors": [list(c) for c in meta.colors],
               "ignore_index": meta.ignore_index}
    (out / "classes.yaml").write_text(yaml.safe_dump(classes, sort_keys=False, default_flow_style=None, width=1000),
                                      encoding="utf-8")

    bar = tqdm(total=params["num_train"] + params["num_val_groups"], desc="synthetic data",
               unit="scene", disable=not progress)
    try:
        for i in range(params["num_train"]):
            layout = sample_layout(_scene_rng(params["seed"], "train", i, 1), h, w)
            appearance = sample_appearance(_scene_rng(params["seed"], "train", i, 0), len(CLASS_NAMES),
                                           params["appearance_spread"])
            image, labels = render_scene(layout, appearance, h, w)
            _save_png(image, out / "train" / "images" / f"{i:05d}.png")
            _save_png(labels, out / "train" / "labels" / f"{i:05d}.png")
            bar.update()
        pairs = []
        for g in range(params["num_val_groups"]):
            appearance, la, lb = _sample_val_group(params["seed"], g, h, w, params["appearance_spread"])
            for tag, layout in (("a", la), ("b", lb)):
                image, labels = render_scene(layout, appearance, h, w)
                _save_png(image, out / "val" / "images" / f"{g:05d}_{tag}.png")
                _save_png(labels, out / "val" / "labels" / f"{g:05d}_{tag}.png")
            for src, dst in (("a", "b"), ("b", "a")):
                pairs.append({
                    "exemplar": f"images/{g:05d}_{src}.png",
                    "exemplar_labels": f"labels/{g:05d}_{src}.png",
                    "target_labels": f"labels/{g:05d}_{dst}.png",
                    "ground_truth": f"images/{g:05d}_{dst}.png",
                })
            bar.update()
    finally:
        bar.close()
    _write_json({"pairs": pairs}, out / "val" / "pairs.json")
    manifest = _manifest(params)
    _write_json(manifest, out / "manifest.json")
    return {
        "root": str(out),
        **params,
        "num_classes": len(CLASS_NAMES),
        "train_images": params["num_train"],
        "val_images": 2 * params["num_val_groups"],
        "val_pairs": len(pairs),
        "seconds": time.perf_counter() - start,
    }


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """The manifest of a generated folder, or None if there is none."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is unreadable ({exc}); delete {Path(root)} to regenerate it") from exc
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} is not a synthetic dataset manifest; delete {Path(root)} to regenerate it")
    return manifest


def _check_manifest(root: Path, manifest: dict[str, Any], params: dict[str, int]) -> None:
    fix = (f"Use another folder for these parameters, or delete {root} (or pass --force / force=True) "
           "to regenerate it.")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"synthetic dataset at {root} has format version {manifest.get('format_version')!r}, "
                         f"this amlight writes version {FORMAT_VERSION}. {fix}")
    on_disk = manifest.get("params") or {}
    differ = [f"{key}: {on_disk.get(key)!r} on disk, {value!r} requested"
              for key, value in params.items() if on_disk.get(key) != value]
    if differ:
        raise ValueError(f"synthetic dataset at {root} was generated with different parameters "
                         f"({'; '.join(differ)}). {fix}")


def _generate_and_publish(root: Path, params: dict[str, int], progress: bool, force: bool) -> dict[str, Any] | None:
    """Generate into a private sibling folder and rename it into place.

    Returns the summary, or None when another process published the same dataset first.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    # A sibling, so the final rename stays on one file system and is atomic; hidden and uniquely
    # named, so a crashed run leaves nothing that looks like a dataset and racing runs don't clash.
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    old = None
    try:
        summary = generate_synthetic_dataset(tmp, progress=progress, **params)
        if force and root.exists():
            old = root.parent / f".{root.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(root, old)
        try:
            # Replaces nothing or an empty folder; fails if a complete folder appeared meanwhile.
            os.replace(tmp, root)
        except OSError:
            manifest = read_manifest(root)
            if manifest is None:
                raise
            _check_manifest(root, manifest, params)
            return None
        summary["root"] = str(root)
        return summary
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists():
            shutil.rmtree(old, ignore_errors=True)


def ensure_synthetic_dataset(root: str | Path, *, progress: bool = True, force: bool = False, **params) -> Path:
    """Make sure ``root`` holds the synthetic dataset generated with ``params``; return ``root``.

    Does nothing if it is already there with the same parameters, raises ValueError if it is there
    with different ones (``force=True`` regenerates instead). Generation is atomic: an interrupted
    run leaves no folder at ``root``, and of two racing processes the loser finds the winner's.
    """
    prepare_synthetic_dataset(root, progress=progress, force=force, **params)
    return Path(root)


def prepare_synthetic_dataset(root: str | Path, *, progress: bool = True, force: bool = False,
                              **params) -> dict[str, Any] | None:
    """:func:`ensure_synthetic_dataset`, returning the generation summary (None if nothing was generated)."""
    root = Path(root)
    params = _canonical_params(params)
    if not force:
        manifest = read_manifest(root)
        if manifest is not None:
            _check_manifest(root, manifest, params)
            return None
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise ValueError(f"{root} exists but is not a generated synthetic dataset (no manifest.json); "
                             "choose another folder, or delete it and run again")
    return _generate_and_publish(root, params, progress, force)
