"""Multi-crop views: their specs from ``config.data.views`` and how they are cut on the host.

ReLICv2 (the paper's Algorithm 1) takes L large and S small random-resized crops of every image.
Each view has a photometric preset ('A' or 'B', BYOL's two asymmetric augmentation recipes),
cycled over a group's views from the group's ``presets`` string: 'AB' -> A, B, A, B. Each large
view is, with probability ``mask_prob``, cut from the saliency-masked image (background set to
``mask_fill``); image and mask are cropped with the same box. Small views never are.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import ml_collections

from relic.data.lazy_tf import tf
from relic.data import augment_spec, augment_tf, crops, seeds

# The centre crop of evaluation: 224 of 256, i.e. 0.875 of the short side.
EVAL_CROP_FRACTION = 224 / 256


@dataclasses.dataclass(frozen=True)
class ViewSpec:
  """One view: output size, crop-area range, photometric preset, whether it may be masked."""
  size: int
  min_scale: float
  max_scale: float
  preset: str
  maskable: bool


def cycle_presets(presets: str, num: int) -> str:
  """'AB', 4 -> 'ABAB'; 'A', 3 -> 'AAA'."""
  return (presets * num)[:num] if num else ""


def view_presets(config: ml_collections.ConfigDict) -> tuple[str, str]:
  """Per-view presets of the large and of the small group, e.g. ('ABAB', 'AB')."""
  views = config.data.views
  return (cycle_presets(views.large.presets, views.large.num),
          cycle_presets(views.small.presets, views.small.num))


def view_specs(config: ml_collections.ConfigDict) -> tuple[tuple[ViewSpec, ...],
                                                           tuple[ViewSpec, ...]]:
  """The large and the small views, in the order they appear in a batch."""
  groups = []
  for name, presets in zip(("large", "small"), view_presets(config)):
    group = config.data.views[name]
    groups.append(tuple(ViewSpec(size=group.size, min_scale=group.min_scale,
                                 max_scale=group.max_scale, preset=p, maskable=name == "large")
                        for p in presets))
  return groups[0], groups[1]


def _uniforms(key: tf.Tensor, purpose: int, num: int) -> tf.Tensor:
  return tf.random.stateless_uniform([num], seed=seeds.fold_in(key, purpose))


def to_output(view: tf.Tensor, preset: str, key: tf.Tensor, host_augment: bool,
              photometric: augment_spec.Photometric = augment_spec.BYOL) -> tf.Tensor:
  """A resized view (float, [0, 255] up to overshoot) -> uint8, or augmented float in [0, 1]."""
  if not host_augment:
    return tf.cast(tf.round(tf.clip_by_value(view, 0.0, 255.0)), tf.uint8)
  view = tf.clip_by_value(view / 255.0, 0.0, 1.0)
  u = _uniforms(key, seeds.AUGMENT, augment_spec.NUM_UNIFORMS)
  size = view.shape[0]
  return augment_tf.augment_image(view, u, preset, augment_spec.blur_radius(size), photometric)


def make_views(image: tf.Tensor, mask: Callable[[], tf.Tensor] | None, key: tf.Tensor,
               specs: tuple[ViewSpec, ...], *, mask_prob: float, mask_fill: float,
               host_augment: bool,
               photometric: augment_spec.Photometric = augment_spec.BYOL) -> tf.Tensor:
  """Cuts all views of one group from one decoded image.

  The image is decoded once and every view cropped from it (measured faster than a
  ``decode_and_crop_jpeg`` per view for 4 + 2 views: see experiments/bench_input.py).

  Args:
    image: ``(H, W, 3)`` uint8.
    mask: returns the ``(H, W, 1)`` uint8 saliency mask (255 = foreground); called only for
      the views that are masked, so unmasked images never read theirs. None: no masks.
    key: the example's key (:func:`relic.data.seeds.example_key`); view i uses fold_in(key, i).
    specs: the group's views; all have the same size.
    mask_prob: probability that a maskable view is cut from the masked image.
    mask_fill: background value in [0, 1] of masked views.
    host_augment: also apply the photometric augmentation here (float32 output).
    photometric: its colour-distortion strength.

  Returns:
    ``(V, size, size, 3)``: uint8, or float32 in [0, 1] when ``host_augment``.
  """
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  views = []
  for index, spec in enumerate(specs):
    view_key = seeds.fold_in(key, index)
    u = _uniforms(view_key, seeds.CROP, crops.CROP_UNIFORMS)
    box = crops.random_resized_crop_box(u, height, width, spec.min_scale, spec.max_scale)
    patch = crops.crop(image, box)
    if spec.maskable and mask is not None and mask_prob > 0:
      patch = tf.cond(_uniforms(view_key, seeds.MASK, 1)[0] < mask_prob,
                      lambda box=box, patch=patch: _remove_background(patch, mask, box, mask_fill),
                      lambda patch=patch: tf.cast(patch, tf.float32))
    views.append(to_output(crops.resize(patch, spec.size), spec.preset, view_key, host_augment,
                           photometric))
  return tf.stack(views)


def _remove_background(patch: tf.Tensor, mask: Callable[[], tf.Tensor],
                       box: tuple[tf.Tensor, ...], fill: float) -> tf.Tensor:
  """``patch * m + 255 * fill * (1 - m)``, m = the same crop of the mask scaled to [0, 1]."""
  alpha = tf.cast(crops.crop(mask(), box), tf.float32) / 255.0
  return tf.cast(patch, tf.float32) * alpha + (255.0 * fill) * (1.0 - alpha)


def eval_image(image: tf.Tensor, key: tf.Tensor, size: int, train_augment: bool) -> tf.Tensor:
  """One evaluation image: float32 ``(size, size, 3)`` in [0, 1].

  Test mode: the centred 224/256 crop of the short side, resized bicubically to ``size`` (the
  official evaluation's crop-then-resize; the same region as resizing the short side to
  ``size * 256 / 224`` and centre-cropping ``size``). Train mode: random-resized crop with
  area U(0.08, 1) and a random horizontal flip.
  """
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  if train_augment:
    u = _uniforms(key, seeds.CROP, crops.CROP_UNIFORMS + 1)
    box = crops.random_resized_crop_box(u, height, width, 0.08, 1.0)
  else:
    box = crops.center_crop_box(height, width, EVAL_CROP_FRACTION)
  out = tf.clip_by_value(crops.resize(crops.crop(image, box), size) / 255.0, 0.0, 1.0)
  if train_augment:
    out = tf.cond(u[crops.CROP_UNIFORMS] < augment_spec.FLIP_PROB,
                  lambda: tf.reverse(out, axis=[1]), lambda: out)
  return out
