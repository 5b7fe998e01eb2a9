"""A Shapes3D-like scene, ray cast in numpy: a floor, a back wall and one object.

Factors (the published 3dshapes grid): floor hue, wall hue, object hue (10
each), object scale (8), shape (cube, cylinder, sphere, capsule) and
orientation (15 camera azimuths in [-30, 30] degrees around the object).

Why it is fast: only scale, shape and orientation change the geometry (480
combinations); hues only colour it. For each geometry the ray caster computes
per-pixel weights ``W[p, s]`` of the four colour sources ``s`` (floor, wall and
object hue, and white for the object's highlight), already shaded (Lambert +
ambient, cast shadows, Blinn-Phong highlight) and anti-aliased (supersampled,
box filtered). An image is then the linear mix ``W @ colours`` -- one small
matrix product per image instead of a ray cast per image.
"""

from __future__ import annotations

import numpy as np

from disdis.errors import DisdisError

FACTOR_NAMES = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
FACTOR_SIZES = (10, 10, 10, 8, 4, 15)
SHAPE_NAMES = ("cube", "cylinder", "sphere", "capsule")
HUES = np.linspace(0.0, 0.9, 10)
SCALES = np.linspace(0.75, 1.25, 8)
ORIENTATIONS = np.linspace(-30.0, 30.0, 15)  # degrees
# The published label values of every factor, in factor order (labels[:, k] takes these values).
FACTOR_VALUES = (HUES, HUES, HUES, SCALES, np.arange(4, dtype=np.float64), ORIENTATIONS)

# Scene constants (world units, y up; the object stands on the floor y=0 at the origin).
_CAMERA_DISTANCE = 6.5
_CAMERA_HEIGHT = 2.6
_LOOK_AT = np.array([0.0, 1.2, 0.0])
_FOV_DEGREES = 40.0
_WALL_Z = -3.5
_TO_LIGHT = np.array([-0.55, 1.0, 0.75]) / np.linalg.norm([-0.55, 1.0, 0.75])
_AMBIENT = 0.35
_DIFFUSE = 0.65
_SPECULAR = 0.35
_SHININESS = 24.0
_SATURATION = 0.85
_EPS = 1e-4
_N_GEOMETRIES = FACTOR_SIZES[3] * FACTOR_SIZES[4] * FACTOR_SIZES[5]


def hue_to_rgb(hue: np.ndarray, saturation: float = _SATURATION) -> np.ndarray:
    """HSV (hue, saturation, value 1) to RGB in [0, 1]; ``hue`` (...,) -> (..., 3)."""
    h = np.asarray(hue, dtype=np.float64)[..., None]
    k = (np.array([5.0, 3.0, 1.0]) + 6.0 * h) % 6.0
    return 1.0 - saturation * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


# ----------------------------------------------------------------- geometry
# Each primitive returns (t, normal) for rays o + t d: t is inf where the ray misses.

def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("...i,...i->...", a, b)


def _sphere(o, d, centre, radius):
    oc = o - centre
    b = _dot(oc, d)
    disc = b * b - (_dot(oc, oc) - radius * radius)
    with np.errstate(invalid="ignore"):
        t = -b - np.sqrt(disc)
    t = np.where((disc >= 0) & (t > _EPS), t, np.inf)
    normal = (o + np.nan_to_num(t, posinf=0.0)[..., None] * d - centre) / radius[..., None]
    return t, normal


def _cylinder(o, d, centre, axis: int, radius, half_length):
    """Side of a cylinder along world ``axis`` through ``centre``, |along-axis offset| <= half_length."""
    perp = [i for i in range(3) if i != axis]
    oc = (o - centre)[..., perp]
    dp = d[..., perp]
    a = _dot(dp, dp)
    b = _dot(oc, dp)
    disc = b * b - a * (_dot(oc, oc) - radius * radius)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-b - np.sqrt(disc)) / a
    along = (o - centre)[..., axis] + t * d[..., axis]
    t = np.where((disc >= 0) & (t > _EPS) & (np.abs(along) <= half_length), t, np.inf)
    p = oc + np.nan_to_num(t, posinf=0.0)[..., None] * dp
    normal = np.zeros(t.shape + (3,))
    normal[..., perp] = p / radius[..., None]
    return t, normal


def _box(o, d, lo, hi):
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / np.where(d == 0, 1e-12, d)
    t1, t2 = (lo - o) * inv, (hi - o) * inv
    near, far = np.minimum(t1, t2), np.maximum(t1, t2)
    t_near, t_far = near.max(-1), far.min(-1)
    t = np.where((t_far >= t_near) & (t_near > _EPS), t_near, np.inf)
    face = near.argmax(-1)
    normal = np.zeros(t.shape + (3,))
    np.put_along_axis(normal, face[..., None],
                      -np.sign(np.take_along_axis(d, face[..., None], -1)), -1)
    return t, normal


def _disk_y(o, d, height, radius):
    """The horizontal disk y = height, x^2 + z^2 <= radius^2 (a cylinder's top), facing up."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (height - o[..., 1]) / d[..., 1]
    p = o + np.nan_to_num(t, posinf=0.0, neginf=0.0)[..., None] * d
    inside = p[..., 0] ** 2 + p[..., 2] ** 2 <= radius * radius
    t = np.where(inside & (t > _EPS), t, np.inf)
    return t, np.broadcast_to(np.array([0.0, 1.0, 0.0]), t.shape + (3,))


def _nearest(hits):
    """Closest of several (t, normal) hits."""
    ts = np.stack([t for t, _ in hits])
    which = ts.argmin(0)
    t = np.take_along_axis(ts, which[None], 0)[0]
    normals = np.stack([np.broadcast_to(n, t.shape + (3,)) for _, n in hits])
    return t, np.take_along_axis(normals, which[None, ..., None], 0)[0]


def _object(shape: int, o, d, a):
    """Ray hits on object ``shape`` of size ``a`` (G, 1) standing at the origin."""
    zero = np.zeros_like(a)
    if shape == 0:  # cube, side 1.6 a
        h = 0.8 * a[..., None]
        return _box(o, d, np.concatenate([-h, zero[..., None], -h], -1),
                    np.concatenate([h, 2 * h, h], -1))
    if shape == 1:  # upright cylinder, radius 0.8 a, height 1.7 a
        r, half = 0.8 * a, 0.85 * a
        centre = np.stack([zero, half, zero], -1)
        return _nearest([_cylinder(o, d, centre, 1, r, half), _disk_y(o, d, 2 * half, r)])
    if shape == 2:  # sphere, radius a
        return _sphere(o, d, np.stack([zero, a, zero], -1), a)
    # capsule lying along x: radius 0.62 a, straight part 1.5 a long
    r, half = 0.62 * a, 0.75 * a
    ends = [np.stack([s * half, r, zero], -1) for s in (-1.0, 1.0)]
    return _nearest([_cylinder(o, d, np.stack([zero, r, zero], -1), 0, r, half),
                     _sphere(o, d, ends[0], r), _sphere(o, d, ends[1], r)])


def _camera_rays(theta_deg: np.ndarray, size: int):
    """Camera origins (G, 1, 3) and unit ray directions (G, size*size, 3) for azimuths ``theta``."""
    th = np.deg2rad(theta_deg)
    origin = np.stack([_CAMERA_DISTANCE * np.sin(th), np.full_like(th, _CAMERA_HEIGHT),
                       _CAMERA_DISTANCE * np.cos(th)], -1)
    forward = _LOOK_AT - origin
    forward /= np.linalg.norm(forward, axis=-1, keepdims=True)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    up = np.cross(right, forward)
    span = np.tan(np.deg2rad(_FOV_DEGREES) / 2)
    c = ((np.arange(size) + 0.5) / size * 2 - 1) * span
    v, u = np.meshgrid(-c, c, indexing="ij")  # row 0 at the top of the image
    d = (forward[:, None, :] + u.reshape(1, -1, 1) * right[:, None, :]
         + v.reshape(1, -1, 1) * up[:, None, :])
    return origin[:, None, :], d / np.linalg.norm(d, axis=-1, keepdims=True)


def geometry_weights(shape: int, scale: np.ndarray, theta_deg: np.ndarray, resolution: int,
                     supersample: int) -> np.ndarray:
    """Colour-source weights (G, R*R, 4) -- floor, wall, object, white -- of G views of one shape.

    Each pixel averages ``supersample**2`` rays (a box filter against aliasing).
    """
    size = resolution * supersample
    o, d = _camera_rays(theta_deg, size)
    a = np.asarray(scale, dtype=np.float64)[:, None]
    t_obj, n_obj = _object(shape, o, d, a)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.where(d[..., 1] < 0, -o[..., 1] / d[..., 1], np.inf)
        t_wall = np.where(d[..., 2] < 0, (_WALL_Z - o[..., 2]) / d[..., 2], np.inf)
    t = np.stack([t_floor, t_wall, t_obj])
    surface = t.argmin(0)  # 0 floor, 1 wall, 2 object
    t_hit = t.min(0)
    normal = np.where((surface == 0)[..., None], [0.0, 1.0, 0.0],
                      np.where((surface == 1)[..., None], [0.0, 0.0, 1.0], n_obj))
    point = o + t_hit[..., None] * d
    # Cast shadows: does a ray from the floor/wall point towards the light hit the object?
    shadow_origin = point + 1e-3 * normal
    t_block, _ = _object(shape, shadow_origin, np.broadcast_to(_TO_LIGHT, d.shape), a)
    lit = (surface == 2) | ~np.isfinite(t_block)
    lambert = np.clip(_dot(normal, _TO_LIGHT), 0.0, None)
    shade = _AMBIENT + _DIFFUSE * lambert * lit
    half_vector = _TO_LIGHT - d
    half_vector /= np.linalg.norm(half_vector, axis=-1, keepdims=True)
    highlight = _SPECULAR * np.clip(_dot(normal, half_vector), 0.0, None) ** _SHININESS * lit

    weights = np.zeros(surface.shape + (4,), dtype=np.float64)
    for s in range(3):
        weights[..., s] = np.where(surface == s, shade, 0.0)
    weights[..., 3] = np.where(surface == 2, highlight, 0.0)
    g = len(theta_deg)
    blocks = weights.reshape(g, resolution, supersample, resolution, supersample, 4)
    return blocks.mean(axis=(2, 4)).reshape(g, resolution * resolution, 4).astype(np.float32)


class Shapes3DRenderer:
    """Renders factor-class rows of the Shapes3D grid, caching each geometry's weights."""

    def __init__(self, resolution: int = 64):
        if resolution < 1:
            raise DisdisError(f"resolution must be positive, got {resolution}")
        self.resolution = int(resolution)
        # Enough rays per pixel to anti-alias, and at least a 64x64 ray grid at low resolutions.
        self.supersample = max(2, -(-64 // self.resolution))
        self._weights = np.zeros((_N_GEOMETRIES, self.resolution ** 2, 4), dtype=np.float32)
        self._done = np.zeros(_N_GEOMETRIES, dtype=bool)
        self._palette = np.concatenate([hue_to_rgb(HUES), np.ones((1, 3))]).astype(np.float32)

    def render(self, factors) -> np.ndarray:
        """uint8 images (n, R, R, 3) of factor-class rows ``factors`` (n, 6)."""
        f = check_factor_rows(factors, FACTOR_SIZES, FACTOR_NAMES)
        geometry = np.ravel_multi_index(tuple(f[:, 3:].T), FACTOR_SIZES[3:])
        self.prepare(np.unique(geometry))
        colours = np.empty((len(f), 4, 3), dtype=np.float32)
        colours[:, :3] = self._palette[f[:, :3]]
        colours[:, 3] = 1.0
        rgb = np.matmul(self._weights[geometry], colours)
        out = np.empty(rgb.shape, dtype=np.uint8)
        np.clip(rgb * 255.0 + 0.5, 0, 255, out=rgb)
        out[...] = rgb
        return out.reshape(len(f), self.resolution, self.resolution, 3)

    def prepare(self, geometry: np.ndarray, max_rays: int = 300_000) -> None:
        """Ray cast the given flat (scale, shape, orientation) geometry indices not cached yet."""
        todo = geometry[~self._done[geometry]]
        if todo.size == 0:
            return
        scale, shape, orient = np.unravel_index(todo, FACTOR_SIZES[3:])
        for s in np.unique(shape):
            group = np.flatnonzero(shape == s)
            # Batches keep the float64 ray arrays to a few hundred MB at most.
            step = max(1, max_rays // (self.resolution * self.supersample) ** 2)
            for i in range(0, len(group), step):
                sel = group[i:i + step]
                self._weights[todo[sel]] = geometry_weights(
                    int(s), SCALES[scale[sel]], ORIENTATIONS[orient[sel]], self.resolution,
                    self.supersample)
        self._done[todo] = True


def check_factor_rows(factors, sizes, names) -> np.ndarray:
    """``factors`` as int64 (n, K), or a DisdisError naming the first out-of-range factor."""
    f = np.asarray(factors)
    if f.ndim != 2 or f.shape[1] != len(sizes) or (f.size and not np.issubdtype(f.dtype, np.integer)):
        raise DisdisError(f"factor indices must be an integer array (n, {len(sizes)}), got shape "
                          f"{f.shape} dtype {f.dtype}")
    f = f.astype(np.int64, copy=False)
    bad = (f < 0) | (f >= np.asarray(sizes))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DisdisError(f"factor {names[col]!r} index {f[row, col]} out of range 0..{sizes[col] - 1}")
    return f


def render_shapes3d(factor_indices, resolution: int = 64) -> np.ndarray:
    """uint8 images (n, R, R, 3) of Shapes3D factor-class rows (n, 6), as ``make shapes3d`` draws them."""
    return Shapes3DRenderer(resolution).render(factor_indices)
