"""The saliency job (relic/jobs/saliency.py) and its pieces.

* The cues against independent references: CIE Lab and Otsu's threshold against scikit-image,
  the border contrast against its formula in NumPy, the barrier distance on images whose
  minimum barrier distance is known in closed form; the scores against hand counts.
* The job end to end on 8 simulated devices, on the built-in data and on a generated image
  folder: one mask per image in the layout pretraining reads back (a pretraining input with
  ``mask_path`` set to the output cuts its masked views with them), the refined masks beating
  the best centred ellipse on built-in 'test' by >= 10 IoU points.
* Resume: a run killed in the middle of writing masks, or stopped (SIGTERM) in the middle of
  the refinement, is finished by the same command with the same masks, and no finished mask
  file is written again. Processes write disjoint shares that cover the split.
* Errors: an unwritable output and a source without a mask layout fail before any compute.
"""

import os
import pathlib
import signal

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import saliency as saliency_config
from relic import config as config_lib
from relic import main
from relic.data import builtin, pipeline, saliency_masks
from relic.errors import ConfigError
from relic.jobs import saliency as job
from relic.saliency import cues, quality, writer
from relic.train import loop

def runlocal():
  return saliency_config.get_config("runlocal")


def files(folder) -> dict[str, bytes]:
  folder = pathlib.Path(folder)
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


# --- the cues and scores against references ---------------------------------------------------

def test_lab_and_otsu_match_scikit_image():
  color, filters = pytest.importorskip("skimage.color"), pytest.importorskip("skimage.filters")
  rng = np.random.default_rng(0)
  rgb = rng.uniform(size=(2, 9, 11, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(cues.rgb_to_lab(jnp.asarray(rgb))), color.rgb2lab(rgb),
                             atol=0.05)
  # Two populations: Otsu's threshold falls between them (on the 64-bin grid, as skimage's).
  maps = np.concatenate([rng.uniform(0.05, 0.3, 300), rng.uniform(0.6, 0.95, 100)])
  maps = maps.reshape(1, 20, 20).astype(np.float32)
  ours = float(cues.otsu_threshold(jnp.asarray(maps))[0])
  theirs = filters.threshold_otsu(maps[0], nbins=64)
  assert abs(ours - theirs) <= 1.5 / 64 and 0.3 < ours < 0.6


def test_border_contrast_is_its_formula():
  rng = np.random.default_rng(1)
  lab = rng.normal(size=(2, 6, 7, 3)).astype(np.float32) * 20
  border_pixels = []
  for image in lab:       # the clockwise ring of border pixels (6x7: 22, all used)
    ring = ([image[0, c] for c in range(6)] + [image[r, 6] for r in range(5)] +
            [image[5, c] for c in range(6, 0, -1)] + [image[r, 0] for r in range(5, 0, -1)])
    border_pixels.append(np.stack(ring))
  border = np.stack(border_pixels)
  distance = np.linalg.norm(lab[:, :, :, None] - border[:, None, None], axis=-1)
  expected = np.sort(distance, axis=-1)[..., :4].mean(axis=-1)
  np.testing.assert_allclose(np.asarray(cues.border_contrast(jnp.asarray(lab), nearest=4)),
                             expected, rtol=1e-5, atol=1e-4)


def test_barrier_distance_of_a_bright_square_and_a_uniform_image():
  image = np.zeros((1, 12, 12), np.float32)
  image[0, 4:8, 4:8] = 0.7         # every path from inside to the border climbs down 0.7
  image[0, 0, 5] = 0.2             # a bump on the border itself costs nothing
  found = np.asarray(cues.barrier_distance(jnp.asarray(image)))
  expected = np.where(image[0] == 0.7, 0.7, 0.0)
  np.testing.assert_allclose(found[0], expected, atol=1e-6)
  uniform = np.asarray(cues.barrier_distance(jnp.full((1, 8, 8), 0.3)))
  np.testing.assert_allclose(uniform, 0.0)


def test_pseudo_masks_find_the_object_of_a_plain_scene():
  image = np.full((1, 24, 24, 3), [0.2, 0.5, 0.2], np.float32)
  image[0, 8:16, 9:17] = [0.9, 0.1, 0.1]
  masks = np.asarray(cues.pseudo_masks(jnp.asarray(image)))
  truth = np.zeros((1, 24, 24), np.uint8)
  truth[0, 8:16, 9:17] = 255
  np.testing.assert_array_equal(masks, truth)


def test_scores_against_hand_counts():
  truth = np.zeros((2, 4, 4), np.uint8)
  truth[:, :2, :2] = 255                       # 4 foreground pixels
  masks = np.zeros((2, 4, 4), np.uint8)
  masks[0, :2, :] = 255                        # 8 pixels, 4 of them right
  masks[1] = truth[1]
  scores = quality.per_image(masks, truth)
  np.testing.assert_allclose(scores["iou"], [4 / 8, 1.0])
  precision, recall = 0.5, 1.0
  f = 1.3 * precision * recall / (0.3 * precision + recall)
  np.testing.assert_allclose(scores["f_measure"], [f, 1.0])
  np.testing.assert_allclose(scores["mae"], [4 / 16, 0.0])
  e = quality.ellipse(5, 5, 0.25)   # semi-axes 1.25 px: the centre and its 4 neighbours
  assert e[2, 2] == 255 and e[0, 0] == 0 and e.sum() // 255 == 5


# --- the job ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def builtin_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("saliency")
  config = runlocal()
  main.check(config)
  return config, workdir, job.run(config, str(workdir))


def test_job_masks_every_builtin_image_and_beats_the_ellipse(builtin_run):
  config, workdir, results = builtin_run
  o = config.data.builtin
  for folder in ("pseudo_masks", "masks"):
    written = files(workdir / folder)
    expected = ([f"train/{i:05d}.png" for i in range(o.num_train)] +
                [f"{s}/{i:05d}.png" for s in ("test", "test_ood") for i in range(o.num_test)])
    assert sorted(written) == sorted(expected), folder
    mask = np.asarray(Image.open(workdir / folder / "test" / "00003.png"))
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255}
  test = results["splits"]["test"]
  assert sum(test["foreground_histogram"]["refined"]) == o.num_test
  scores = test["scores"]
  assert scores["refined"]["num_images"] == o.num_test
  assert scores["refined"]["iou"] >= scores["ellipse"]["iou"] + 10, scores
  assert scores["cues"]["iou"] >= scores["ellipse"]["iou"] + 10, scores
  # The scores are those of the files: recomputed here from the masks and the exact masks.
  exact = builtin.load("test", num_examples=o.num_test, image_size=o.image_size, seed=o.seed)
  written = np.stack([np.asarray(Image.open(workdir / "masks" / "test" / f"{i:05d}.png"))
                      for i in range(o.num_test)])
  iou = 100 * quality.per_image(written, exact["mask"])["iou"].mean()
  assert iou == pytest.approx(scores["refined"]["iou"], abs=1e-6)
  assert "F-measure" in (workdir / "results.md").read_text()


def pretraining_views(data_update: dict, mask_path: str) -> np.ndarray:
  """The large views of a first pretraining batch with every view masked (fill 0) and no
  colour change, so that a masked view's removed background is exactly black."""
  config = config_lib.base_config()
  config.data.update(dict(data_update, mask_path=mask_path, mask_prob=1.0, mask_fill=0.0,
                          augment_on_device=False, train_split="train"))
  config.data.views.large.update(dict(num=2, size=16, min_scale=1.0, max_scale=1.0))
  config.data.views.small.num = 0
  config.data.update(dict(color_jitter_strength=0.0, grayscale_prob=0.0, blur=False))
  batches = pipeline.pretrain_batches(config, batch_size=16, seed=0)
  return next(batches)["large"]


def test_pretraining_cuts_its_masked_views_with_the_jobs_masks(builtin_run):
  config, workdir, _ = builtin_run
  data = {"source": "builtin", "builtin": config.data.builtin.to_dict()}
  exact = pretraining_views(data, "")
  ours = pretraining_views(data, str(workdir / "masks"))
  black = lambda views: np.all(views == 0, axis=-1).mean(axis=(2, 3))   # filled background
  assert np.all(black(ours) > 0.3)            # every large view is masked ...
  assert not np.array_equal(ours, exact)      # ... with the job's masks, not the exact ones


def test_refined_masks_of_an_image_folder_mirror_its_tree(tmp_path):
  images = builtin.load("test", num_examples=24, image_size=32, seed=3)["image"]
  for i, image in enumerate(images):
    folder = tmp_path / "images" / "train" / f"class_{i % 3}"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"img{i}.{('png', 'jpg')[i % 2]}")
  config = runlocal()
  config.data.update(dict(source="folder", path=str(tmp_path / "images"), train_split="train",
                          eval_split="train"))
  config.saliency.update(dict(splits=("train",), score_splits=()))
  config.segmentation.num_steps = 8
  main.run(config, str(tmp_path / "run"))
  written = files(tmp_path / "run" / "masks")
  assert sorted(written) == sorted(f"train/class_{i % 3}/img{i}.png" for i in range(24))
  # Read back through the folder source's own mask lookup.
  views = pretraining_views({"source": "folder", "path": str(tmp_path / "images")},
                            str(tmp_path / "run" / "masks"))
  assert views.shape[0] == 16 and np.all(np.all(views == 0, axis=-1).mean(axis=(2, 3)) > 0.05)


def test_a_killed_run_finishes_with_the_same_masks_and_rewrites_none(builtin_run, tmp_path,
                                                                      monkeypatch):
  config, reference, _ = builtin_run
  real_write, count = writer.write, [0]

  def dies_after_100(folder, name, mask):
    count[0] += 1
    if count[0] > 100:
      raise KeyboardInterrupt("killed")
    real_write(folder, name, mask)

  monkeypatch.setattr(writer, "write", dies_after_100)
  with pytest.raises(KeyboardInterrupt):
    job.run(config, str(tmp_path))
  monkeypatch.undo()
  first = {p: os.stat(tmp_path / "pseudo_masks" / p).st_mtime_ns
           for p in files(tmp_path / "pseudo_masks")}
  assert 0 < len(first) <= 100 + 8 and not list((tmp_path / "pseudo_masks").rglob("*.tmp"))

  def sigterm(batch):
    signal.raise_signal(signal.SIGTERM)      # evicted in the middle of the refinement
    return batch

  original = loop._next_batch
  monkeypatch.setattr(loop, "_next_batch", lambda batches, step: sigterm(original(batches, step))
                      if step == 15 else original(batches, step))
  assert job.run(config, str(tmp_path)) == {}          # stopped: the CLI exits 0
  monkeypatch.undo()
  assert not files(tmp_path / "masks")                  # no refined mask before the end
  job.run(config, str(tmp_path))
  for folder in ("pseudo_masks", "masks"):
    assert files(tmp_path / folder) == files(reference / folder), folder
  for name, mtime in first.items():                     # written once, never again
    assert os.stat(tmp_path / "pseudo_masks" / name).st_mtime_ns == mtime


def test_processes_write_disjoint_shares_that_cover_the_split(tmp_path, monkeypatch):
  config = runlocal()
  config.saliency.update(dict(refine=False, splits=("test",), score_splits=()))
  seen = []
  for index in range(2):
    monkeypatch.setattr(saliency_masks.jax, "process_index", lambda index=index: index)
    monkeypatch.setattr(saliency_masks.jax, "process_count", lambda: 2)
    names = saliency_masks.mask_names(config.data, "test")
    seen.append(set(names))
    job._write_masks(config, "test", str(tmp_path), job._cue_stage(config), "Cue masks")
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == {f"test/{i:05d}" for i in range(config.data.builtin.num_test)}
  assert set(n[:-4] for n in files(tmp_path)) == seen[0] | seen[1]


def test_unwritable_output_and_sources_without_masks_fail_before_compute(tmp_path):
  (tmp_path / "a_file").write_text("")
  config = runlocal()
  config.saliency.output = str(tmp_path / "a_file" / "masks")
  with pytest.raises(ConfigError, match=r"config\.saliency\.output: cannot write masks to"):
    main.check(config)
  config = runlocal()
  config.data.update(dict(source="fgvc_aircraft", path=str(tmp_path)))
  with pytest.raises(ConfigError, match="takes no mask folder"):
    main.check(config)
