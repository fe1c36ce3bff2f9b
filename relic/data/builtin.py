"""The built-in dataset: ten shape classes rendered with NumPy, no download.

A real (small) recognition problem for laptops and tests. The label is the identity of one
object (circle, square, triangle, star, cross, ring, crescent, heart, L-shape, frame) while
everything that should not matter varies: object colour (from a palette shared by all
classes), position, size and a rotation of up to 30 degrees; the background; clutter (thin
line segments behind the object); pixel noise. A randomly initialised encoder's features are
dominated by colour and background and probe the shape poorly.

Splits: 'train' and 'test' have "dead leaves" backgrounds (overlapping discs of independent
colours, so no background pattern is shared between two crops of one image); 'test_ood' has
periodic backgrounds never seen in training (gradient, stripes, checker, blobs, dots,
concentric waves) in two random colours, to measure robustness to a background shift. Every
image comes with its exact foreground mask (the object only, no clutter), used as the saliency
mask for ReLICv2's masked views.

Generation is deterministic given (split, size, count, seed), vectorised over images, and the
arrays are cached under ``$RELIC_CACHE`` (default ``~/.cache/relic``) so that later runs load
them instantly.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from concurrent import futures

import numpy as np
from absl import logging

VERSION = 2
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "crescent", "heart",
          "ell", "frame")
NUM_CLASSES = len(SHAPES)
TEXTURES = ("leaves", "gradient", "stripes", "checker", "blobs", "dots", "waves")
SPLIT_TEXTURES = {"train": (0,), "test": (0,), "test_ood": (1, 2, 3, 4, 5, 6)}
SPLITS = tuple(SPLIT_TEXTURES)
_SPLIT_IDS = {"train": 0, "test": 1, "test_ood": 2}
_CHUNK = 500
_MAX_CLUTTER = 3
_NUM_LEAVES = 30
_NUM_HUES = 6
_MAX_ANGLE = np.pi / 6     # objects are upright up to +-30 degrees
_LUMA = np.array([0.2989, 0.5870, 0.1140], np.float32)


def cache_root(cache_dir: str = "") -> pathlib.Path:
  """``cache_dir``, else ``$RELIC_CACHE``, else ``~/.cache/relic``."""
  root = cache_dir or os.environ.get("RELIC_CACHE") or os.path.join("~", ".cache", "relic")
  return pathlib.Path(root).expanduser()


def load(split: str, *, num_examples: int, image_size: int, seed: int,
         cache_dir: str = "") -> dict[str, np.ndarray]:
  """The split's arrays, generated once and then read from the cache.

  Returns:
    dict with 'image' (N, S, S, 3) uint8, 'mask' (N, S, S) uint8 in {0, 255}, 'label' (N,)
    int32, and the generating factors 'texture', 'center', 'radius', 'angle', 'color'.
  """
  path = (cache_root(cache_dir) / "builtin" /
          f"shapes-v{VERSION}-{split}-n{num_examples}-s{image_size}-seed{seed}.npz")
  if path.exists():
    with np.load(path) as data:
      return dict(data)
  arrays = generate(split, num_examples=num_examples, image_size=image_size, seed=seed)
  path.parent.mkdir(parents=True, exist_ok=True)
  # Atomic: processes generating the same split at once never read a half-written file.
  with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as f:
    np.savez(f, **arrays)
  os.replace(f.name, path)
  logging.info("Built-in %s split (%d images, %d px) cached at %s.", split, num_examples,
               image_size, path)
  return arrays


def generate(split: str, *, num_examples: int, image_size: int,
             seed: int) -> dict[str, np.ndarray]:
  """Renders a split; see :func:`load` for the arrays."""
  if split not in SPLIT_TEXTURES:
    raise ValueError(f"Unknown built-in split {split!r}; choose one of {SPLITS}.")
  rng = np.random.default_rng([seed, _SPLIT_IDS[split], VERSION])
  factors = _sample_factors(rng, split, num_examples, image_size)
  images = np.empty((num_examples, image_size, image_size, 3), np.uint8)
  masks = np.empty((num_examples, image_size, image_size), np.uint8)

  def render(chunk: slice, noise: np.ndarray) -> None:
    images[chunk], masks[chunk] = _render({k: v[chunk] for k, v in factors.items()},
                                          image_size, noise)

  # Chunks render on every core (NumPy releases the GIL in its array loops); the pixel noise is
  # drawn here, chunk after chunk, so the arrays are the same for any number of threads.
  workers = max(1, min(os.cpu_count() or 1, 8))
  with futures.ThreadPoolExecutor(workers) as pool:
    pending = []
    for start in range(0, num_examples, _CHUNK):
      chunk = slice(start, min(start + _CHUNK, num_examples))
      noise = rng.normal(0.0, 0.02, (chunk.stop - start, image_size, image_size, 3))
      pending.append(pool.submit(render, chunk, noise.astype(np.float32)))
      if len(pending) > 2 * workers:   # bounds the noise arrays held at once
        pending.pop(0).result()
    for job in pending:
      job.result()
  out = {k: v for k, v in factors.items() if not k.startswith("_")}
  return dict(image=images, mask=masks, **out)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
  k = np.mod(np.array([5.0, 3.0, 1.0], np.float32) + 6.0 * h[..., None], 6.0)
  return (v[..., None] - v[..., None] * s[..., None] *
          np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)).astype(np.float32)


def _sample_factors(rng: np.random.Generator, split: str, n: int,
                    size: int) -> dict[str, np.ndarray]:
  """Every random factor of every image, drawn up front (vectorised and order-independent)."""
  u = lambda *shape: rng.random((n,) + shape, dtype=np.float32)  # noqa: E731
  label = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int32)
  radius = (0.25 + 0.1 * u()) * size
  center = radius[:, None] + u(2) * (size - 2 * radius[:, None])
  # Object colours come from a small palette shared by every class: colour says nothing about
  # the class and, among many images, little about which image it is.
  color = _hsv_to_rgb(rng.integers(0, _NUM_HUES, n) / _NUM_HUES, 0.6 + 0.4 * u(),
                      0.6 + 0.4 * u())
  textures = np.array(SPLIT_TEXTURES[split], np.int32)
  texture = textures[rng.integers(0, len(textures), n)]
  bg_colors = _hsv_to_rgb(u(2), 0.8 * u(2), 0.1 + 0.85 * u(2))       # (n, 2, 3)
  # Keep the object visible: its luminance at least 0.3 away from the background's mean.
  bg_luma = (bg_colors @ _LUMA).mean(axis=1)
  luma = color @ _LUMA
  close = np.abs(luma - bg_luma) < 0.3
  target = np.where(bg_luma > 0.5, bg_luma - 0.35, np.minimum(bg_luma + 0.35, 0.95))
  color = np.where(close[:, None],
                   np.clip(color * (target / np.maximum(luma, 1e-3))[:, None], 0.0, 1.0), color)
  num_clutter = rng.integers(0, _MAX_CLUTTER + 1, n)
  return dict(
      label=label, texture=texture, center=center.astype(np.float32),
      radius=radius.astype(np.float32), angle=(_MAX_ANGLE * (2 * u() - 1)).astype(np.float32),
      color=color.astype(np.float32),
      _bg_colors=bg_colors, _bg_params=u(8),
      _clutter_points=u(_MAX_CLUTTER, 4) * size,
      _clutter_width=0.8 + 1.2 * u(_MAX_CLUTTER),
      _clutter_colors=_hsv_to_rgb(u(_MAX_CLUTTER), u(_MAX_CLUTTER), u(_MAX_CLUTTER)),
      _clutter_on=np.arange(_MAX_CLUTTER)[None, :] < num_clutter[:, None],
      _leaf_centers=u(_NUM_LEAVES, 2) * size,
      _leaf_radii=(0.04 + 0.12 * u(_NUM_LEAVES)) * size,
      _leaf_colors=_hsv_to_rgb(u(_NUM_LEAVES), 0.35 * u(_NUM_LEAVES), 0.3 + 0.5 * u(_NUM_LEAVES)),
  )


def _texture(kind: np.ndarray, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Background pattern in [0, 1] for each image; x, y: (1, S, S) coordinates in [0, 1]."""
  t = np.zeros((len(kind),) + x.shape[1:], np.float32)
  p = params[:, :, None, None]                         # (n, 8, 1, 1)
  phi = np.pi * p[:, 0]
  freq = 2.0 + 4.0 * p[:, 1]
  phase = p[:, 2]
  xr = np.cos(phi) * (x - 0.5) + np.sin(phi) * (y - 0.5)
  yr = -np.sin(phi) * (x - 0.5) + np.cos(phi) * (y - 0.5)
  for k, name in enumerate(TEXTURES):
    sel = kind == k
    if not sel.any() or name == "leaves":   # painted by _dead_leaves, not a pattern
      continue
    a, b, f, ph = xr[sel], yr[sel], freq[sel], phase[sel]
    if name == "gradient":
      v = 0.5 + 1.2 * a
    elif name == "stripes":
      v = 0.5 + 0.5 * np.tanh(3.0 * np.sin(2 * np.pi * (f * a + ph)))
    elif name == "checker":
      v = 0.5 + 0.5 * np.tanh(3.0 * np.sin(2 * np.pi * f * a) * np.sin(2 * np.pi * f * b))
    elif name == "blobs":
      q = p[sel]
      s = (np.sin(2 * np.pi * (3 * q[:, 3] * a + 2 * q[:, 4] * b) + 6 * q[:, 5]) +
           np.sin(2 * np.pi * (2 * q[:, 6] * a - 3 * q[:, 7] * b) + 6 * ph))
      v = 0.5 + 0.5 * np.tanh(2.0 * s)
    elif name == "dots":
      dx = np.mod(f * a, 1.0) - 0.5
      dy = np.mod(f * b, 1.0) - 0.5
      v = 0.5 + 0.5 * np.tanh(12.0 * (0.3 - np.sqrt(dx * dx + dy * dy)))
    else:  # waves: concentric rings around a random centre
      q = p[sel]
      r = np.sqrt((x - q[:, 3]) ** 2 + (y - q[:, 4]) ** 2)
      v = 0.5 + 0.5 * np.sin(2 * np.pi * (1.5 * f * r + ph))
    t[sel] = np.clip(v, 0.0, 1.0)
  return t


def _dead_leaves(centers: np.ndarray, radii: np.ndarray, colors: np.ndarray, x: np.ndarray,
                 y: np.ndarray) -> np.ndarray:
  """Overlapping discs of independent colours, painted back to front ("dead leaves").

  Unlike the periodic textures, nothing about it is constant across an image: two crops of
  one image share no background pattern, so the background cannot identify an image and a
  self-supervised objective has to rely on the object.
  """
  image = np.repeat(colors[:, :1, None, :], x.shape[1], axis=1)
  image = np.repeat(image, x.shape[2], axis=2)                 # (n, S, S, 3) first colour
  for j in range(1, centers.shape[1]):
    dist = np.hypot(x - centers[:, j, 0, None, None], y - centers[:, j, 1, None, None])
    alpha = np.clip(radii[:, j, None, None] + 0.5 - dist, 0.0, 1.0)[..., None]
    image = image * (1 - alpha) + colors[:, j, None, None, :] * alpha
  return image


def _sd_box(px: np.ndarray, py: np.ndarray, hx: float, hy: float) -> np.ndarray:
  dx, dy = np.abs(px) - hx, np.abs(py) - hy
  outside = np.hypot(np.maximum(dx, 0.0), np.maximum(dy, 0.0))
  return outside + np.minimum(np.maximum(dx, dy), 0.0)


def _sd_polygon(px: np.ndarray, py: np.ndarray, vertices: np.ndarray) -> np.ndarray:
  """Exact signed distance to a simple polygon (negative inside)."""
  d = (px - vertices[0, 0]) ** 2 + (py - vertices[0, 1]) ** 2
  sign = np.ones_like(px)
  for i in range(len(vertices)):
    vi, vj = vertices[i], vertices[i - 1]
    ex, ey = vj[0] - vi[0], vj[1] - vi[1]
    wx, wy = px - vi[0], py - vi[1]
    t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    d = np.minimum(d, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
    c1, c2, c3 = py >= vi[1], py < vj[1], ex * wy > ey * wx
    flip = (c1 & c2 & c3) | (~c1 & ~c2 & ~c3)
    sign = np.where(flip, -sign, sign)
  return sign * np.sqrt(d)


def _regular(num: int, radii: tuple[float, ...]) -> np.ndarray:
  angles = np.pi / 2 + 2 * np.pi * np.arange(num) / num
  r = np.resize(np.array(radii, np.float32), num)
  return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1).astype(np.float32)


_TRIANGLE = _regular(3, (1.0,))
_STAR = _regular(10, (1.0, 0.42))


def _shape_distance(label: int, px: np.ndarray, py: np.ndarray) -> np.ndarray:
  """Signed distance (object units, negative inside) of shape ``label``; objects fit |p| <= 1."""
  name = SHAPES[label]
  r = np.hypot(px, py)
  if name == "circle":
    return r - 0.85
  if name == "square":
    return _sd_box(px, py, 0.7, 0.7)
  if name == "triangle":
    return _sd_polygon(px, py + 0.2, _TRIANGLE)
  if name == "star":
    return _sd_polygon(px, py, _STAR)
  if name == "cross":
    return np.minimum(_sd_box(px, py, 0.9, 0.27), _sd_box(px, py, 0.27, 0.9))
  if name == "ring":
    return np.abs(r - 0.68) - 0.24
  if name == "crescent":
    return np.maximum(r - 0.9, -(np.hypot(px - 0.42, py) - 0.72))
  if name == "heart":
    # A square on its corner with a disc on each upper edge.
    h, y0 = 0.45, 0.2
    qx, qy = (px + (py - y0)) / np.sqrt(2), (px - (py - y0)) / np.sqrt(2)
    lobe_x, lobe_y = h * np.sqrt(2) / 2, y0 - h * np.sqrt(2) / 2
    lobes = np.minimum(np.hypot(px - lobe_x, py - lobe_y), np.hypot(px + lobe_x, py - lobe_y))
    return np.minimum(_sd_box(qx, qy, h, h), lobes - h)
  if name == "ell":
    return np.minimum(_sd_box(px + 0.5, py, 0.25, 0.9), _sd_box(px - 0.05, py - 0.65, 0.8, 0.25))
  return np.abs(_sd_box(px, py, 0.72, 0.72)) - 0.17   # frame


def _render(f: dict[str, np.ndarray], size: int,
            noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  n = len(f["label"])
  coords = (np.arange(size, dtype=np.float32) + 0.5)
  y, x = np.meshgrid(coords, coords, indexing="ij")
  x, y = x[None], y[None]                               # (1, S, S) pixel centres
  t = _texture(f["texture"], f["_bg_params"], x / size, y / size)[..., None]
  bg = f["_bg_colors"][:, None, None, 0] * (1 - t) + f["_bg_colors"][:, None, None, 1] * t
  image = bg.astype(np.float32)
  leaves = f["texture"] == TEXTURES.index("leaves")
  if leaves.any():
    image[leaves] = _dead_leaves(f["_leaf_centers"][leaves], f["_leaf_radii"][leaves],
                                 f["_leaf_colors"][leaves], x, y)
  # Clutter: thin segments behind the object, not part of its mask.
  for j in range(_MAX_CLUTTER):
    on = f["_clutter_on"][:, j]
    if not on.any():
      continue
    ax, ay, bx, by = (f["_clutter_points"][on, j, i][:, None, None] for i in range(4))
    ex, ey = bx - ax, by - ay
    s = np.clip(((x - ax) * ex + (y - ay) * ey) / np.maximum(ex * ex + ey * ey, 1e-6), 0, 1)
    dist = np.hypot(x - ax - s * ex, y - ay - s * ey)
    alpha = np.clip(f["_clutter_width"][on, j][:, None, None] / 2 + 0.5 - dist, 0, 1)[..., None]
    image[on] = image[on] * (1 - alpha) + f["_clutter_colors"][on, j][:, None, None] * alpha
  # The object, in its own rotated and scaled frame.
  cos, sin = np.cos(f["angle"])[:, None, None], np.sin(f["angle"])[:, None, None]
  rad = f["radius"][:, None, None]
  dx = (x - f["center"][:, 0, None, None]) / rad
  dy = (y - f["center"][:, 1, None, None]) / rad
  px, py = cos * dx + sin * dy, -sin * dx + cos * dy
  distance = np.empty((n, size, size), np.float32)
  for k in range(NUM_CLASSES):
    sel = f["label"] == k
    if sel.any():
      distance[sel] = _shape_distance(k, px[sel], py[sel])
  alpha = np.clip(0.5 - distance * rad, 0.0, 1.0)      # about one pixel of antialiasing
  image = image * (1 - alpha[..., None]) + f["color"][:, None, None] * alpha[..., None]
  image += noise
  pixels = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
  mask = np.where(alpha >= 0.5, 255, 0).astype(np.uint8)
  return pixels, mask
