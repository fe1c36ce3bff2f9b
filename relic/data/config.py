"""The ``config.data`` section: where images come from and how views are cut from them."""

import ml_collections


def data_config() -> ml_collections.ConfigDict:
  """Defaults: 4x224 large + 2x96 small views, p_m = 0.1 (sources: the README's hyper-parameter
  table)."""
  return ml_collections.ConfigDict(dict(
      # A name of relic.data.sources.SOURCES: 'tfds' (any tfds image dataset), 'folder' (a
      # directory of images), 'builtin' (the generated shapes, with exact object masks: no
      # download), 'objectnet' (an ObjectNet 1.0 folder, a test set), 'fgvc_aircraft'
      # (FGVC-Aircraft 2013b as downloaded); for segmentation 'voc2012' (a VOC2012 folder) or
      # 'cityscapes' (tfds cityscapes/semantic_segmentation), 'builtin', and 'saliency_masks'
      # (see saliency_masks below).
      source="tfds",
      dataset="imagenet2012",
      data_dir="",            # tfds data_dir; '' = tfds default (~/tensorflow_datasets).
      path="",                # image folder for source='folder' (layout: relic/data/folder_source.py),
                              # the dataset folder for 'objectnet', 'fgvc_aircraft' and 'voc2012'.
      # Folder of saliency masks, same relative paths as the images (any image extension;
      # tfds: matched by the example's file_name stem). Needed when mask_prob > 0, except for
      # the built-in source, which has exact object masks. `relic --config=saliency` makes them.
      mask_path="",
      # source='saliency_masks' (relic/data/saliency_masks.py): the images of source `images`
      # (read with the other fields here) and their mask_path masks as two classes, background
      # and foreground, resized to size x size (0: as stored); the saliency job refines on it.
      saliency_masks=dict(images="", size=0),
      train_split="train",
      eval_split="validation",
      # The labelled split that pretraining's evaluators read (the kNN bank, the frozen linear
      # classifier's training set); '' = train_split. STL-10 pretrains on 'unlabelled+train'
      # and scores on the 5,000 labelled 'train' images.
      labelled_split="",
      # The number of training examples the config was written for (ImageNet's 1,281,167 in
      # the ImageNet configs; 0 = no statement). Only checked: epochs always count the examples
      # of the actual train_split (or train.num_train_examples when set), and a split of
      # another size logs a warning at start-up naming both numbers.
      expected_train_examples=0,
      # Views (the paper's multi-crop, Algorithm 1). Presets cycle over a group's views: 'AB' ->
      # A, B, A, B.
      views=dict(
          large=dict(num=4, size=224, min_scale=0.08, max_scale=1.0, presets="AB"),
          small=dict(num=2, size=96, min_scale=0.05, max_scale=0.14, presets="AB"),
      ),
      mask_prob=0.1,          # p_m: probability a large view is cut from the masked image.
      mask_fill=0.0,          # value of removed background pixels.
      # Colour distortion: multiplier of BYOL's jitter deltas (brightness/contrast 0.4,
      # saturation 0.2, hue 0.1) and the grayscale probability (relic/data/augment_spec.py).
      color_jitter_strength=1.0,
      grayscale_prob=0.2,
      blur=True,              # Gaussian blur with the presets' probabilities; False: never
                              # (the CIFAR recipes: blur hurts at 32 px).
      # Photometric augmentation inside the jitted step (True) or in tf.data on the host.
      augment_on_device=True,
      fake=False,             # synthetic batches: measure the step without the pipeline.
      shuffle_buffer=10_000,  # tfds: undecoded records; folder/builtin shuffle fully.
      num_threads=0,          # tf.data threads per host; 0 = AUTOTUNE.
      prefetch_to_device=2,
      # Generated data, validation verdicts and converted images; '' = $RELIC_CACHE or
      # ~/.cache/relic.
      cache_dir="",
      # Built-in shapes dataset (source='builtin', relic/data/builtin.py); splits 'train',
      # 'test' (num_test) and 'test_ood' (num_test, unseen background textures).
      builtin=dict(num_train=10_000, num_test=2_000, image_size=64, seed=0),
  ))
