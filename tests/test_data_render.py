"""The procedural generators against independent references: brute-force ray marching for the
ray caster, colorsys for the hues, analytic areas, centroids and moments for the sprites."""

import colorsys

import numpy as np
import pytest

from disdis.data import render_dsprites, render_shapes3d
from disdis.data.render_dsprites import ORIENTATIONS, POSITIONS, SCALES
from disdis.data.render_shapes3d import HUES, _object
from disdis.errors import DisdisError

S3D_BASE = np.array([1, 6, 3, 4, 0, 7])


def traversal(base, k, size):
    f = np.repeat(np.asarray(base)[None], size, axis=0)
    f[:, k] = np.arange(size)
    return f


# ------------------------------------------------------------------ Shapes3D
def _inside(shape, p, a):
    """Inside-tests of the four objects (size a), written independently of the ray caster."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    if shape == 0:
        h = 0.8 * a
        return (np.abs(x) <= h) & (y >= 0) & (y <= 2 * h) & (np.abs(z) <= h)
    if shape == 1:
        return (x * x + z * z <= (0.8 * a) ** 2) & (y >= 0) & (y <= 1.7 * a)
    if shape == 2:
        return x * x + (y - a) ** 2 + z * z <= a * a
    r, half = 0.62 * a, 0.75 * a
    xc = np.clip(x, -half, half)  # distance to the capsule's core segment
    return (x - xc) ** 2 + (y - r) ** 2 + z * z <= r * r


@pytest.mark.parametrize("shape", range(4), ids=["cube", "cylinder", "sphere", "capsule"])
def test_ray_hits_match_brute_force_marching(shape):
    rng = np.random.default_rng(shape)
    n, a = 200, 1.1
    origin = np.array([[[2.0, 2.5, 5.0]]])
    target = rng.uniform([-1.5, -0.2, -1.5], [1.5, 2.6, 1.5], size=(1, n, 3))
    d = target - origin
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    t, normal = _object(shape, origin, d, np.array([[a]]))
    ts = np.linspace(0, 10, 10001)  # march in steps of 1e-3
    inside = _inside(shape, origin[..., None, :] + ts[:, None] * d[..., None, :], a)[0]
    first = np.where(inside.any(1), ts[inside.argmax(1)], np.inf)
    hit = np.isfinite(first)
    assert hit.sum() > 50 and (~hit).sum() > 50
    assert np.array_equal(np.isfinite(t[0]), hit)
    assert np.allclose(t[0][hit], first[hit], atol=2e-3)
    assert np.allclose(np.linalg.norm(normal[0][hit], axis=-1), 1.0)
    assert np.all(np.einsum("ni,ni->n", normal[0][hit], d[0][hit]) < 0)  # normals face the ray


def test_hues_are_the_labelled_hues():
    """Floor, wall and object pixels have the hue of their factor value (colorsys as reference)."""
    f = np.repeat(S3D_BASE[None], 10, axis=0)
    f[:, :3] = np.stack([np.arange(10), (np.arange(10) + 3) % 10, (np.arange(10) + 6) % 10], 1)
    f[:, 4] = 2  # sphere: a smooth object
    images = render_shapes3d(f, 64).astype(np.float64) / 255
    for k, (row, col) in enumerate([(60, 32), (4, 32), (30, 32)]):  # floor, wall, object
        hue = np.array([colorsys.rgb_to_hsv(*px)[0] for px in images[:, row, col]])
        err = np.abs((hue - HUES[f[:, k]] + 0.5) % 1.0 - 0.5)
        assert err.max() < 0.02, (k, hue)


def test_every_factor_value_is_visibly_distinct():
    for k, size in enumerate((10, 10, 10, 8, 4, 15)):
        images = render_shapes3d(traversal(S3D_BASE, k, size), 64).astype(np.float64)
        diff = np.abs(images[:, None] - images[None]).mean(axis=(2, 3, 4))
        assert diff[~np.eye(size, dtype=bool)].min() > 0.2, (k, diff)


def test_object_grows_with_scale_and_render_is_deterministic():
    f = traversal(S3D_BASE, 3, 8)
    f[:, 0], f[:, 1], f[:, 2] = 0, 4, 8  # red floor, cyan wall, magenta object
    images = render_shapes3d(f, 32)
    assert np.array_equal(images, render_shapes3d(f, 32))
    magenta = (images[..., 2].astype(int) - images[..., 1]) > 60
    area = magenta.sum(axis=(1, 2))
    assert np.all(np.diff(area) > 0)
    # Area grows like scale^2 (perspective makes it a little faster).
    ratio = area[-1] / area[0]
    assert (1.25 / 0.75) ** 2 * 0.85 < ratio < (1.25 / 0.75) ** 2 * 1.4


def test_renderer_rejects_out_of_range_factors():
    with pytest.raises(DisdisError, match="'shape' index 4 out of range 0..3"):
        render_shapes3d([[0, 0, 0, 0, 4, 0]])
    with pytest.raises(DisdisError, match="'pos_y' index 32 out of range"):
        render_dsprites([[0, 0, 0, 0, 32]])


# ------------------------------------------------------------------ dSprites
def _heart_area_unit():
    """Area inside (x^2 + y^2 - 1)^3 <= x^2 y^3, integrated on a fine grid."""
    g = np.linspace(-1.5, 1.5, 3001)
    x, y = np.meshgrid(g, g)
    return ((x * x + y * y - 1) ** 3 <= x * x * y ** 3).mean() * 9.0


@pytest.mark.parametrize("shape,area_at_1", [(0, 14.0 ** 2), (1, np.pi * 10 * 5),
                                             (2, 64 * _heart_area_unit())])
def test_sprite_area_and_centroid(shape, area_at_1):
    rng = np.random.default_rng(shape)
    f = np.stack([np.full(60, shape), rng.integers(0, 6, 60), rng.integers(0, 40, 60),
                  rng.integers(0, 32, 60), rng.integers(0, 32, 60)], axis=1)
    images = render_dsprites(f)
    assert images.dtype == np.uint8 and images.shape == (60, 64, 64) and images.max() == 1
    area = images.sum(axis=(1, 2))
    expected = area_at_1 * SCALES[f[:, 1]] ** 2
    assert np.all(np.abs(area - expected) < 0.08 * expected + 6)
    if shape < 2:  # point-symmetric sprites: centroid of the pixel centres = sprite centre
        rows, cols = np.indices((64, 64)) + 0.5
        cy = (images * rows).sum(axis=(1, 2)) / area
        cx = (images * cols).sum(axis=(1, 2)) / area
        assert np.allclose(cx, 10.5 + 43 * POSITIONS[f[:, 3]], atol=0.35)
        assert np.allclose(cy, 10.5 + 43 * POSITIONS[f[:, 4]], atol=0.35)


def test_ellipse_axis_follows_orientation():
    f = np.array([[1, 5, k, 16, 16] for k in range(40)])
    images = render_dsprites(f).astype(np.float64)
    rows, cols = np.indices((64, 64)) + 0.5
    m = images.sum(axis=(1, 2))
    cx, cy = (images * cols).sum((1, 2)) / m, (images * rows).sum((1, 2)) / m
    dx, dy = cols - cx[:, None, None], rows - cy[:, None, None]
    mxx, myy, mxy = [(images * v).sum((1, 2)) for v in (dx * dx, dy * dy, dx * dy)]
    angle = 0.5 * np.arctan2(2 * mxy, mxx - myy)  # major-axis angle, image y pointing down
    # The major axis lies at +theta in image coordinates (y down), mod pi.
    err = (angle - ORIENTATIONS + np.pi / 2) % np.pi - np.pi / 2
    assert np.abs(err).max() < 0.05
    assert np.array_equal(images[0], images[39])  # 0 and 2 pi are the same, as published
