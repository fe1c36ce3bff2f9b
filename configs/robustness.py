"""Robustness of the ImageNet linear head: ImageNet-V2, -R, -Sketch, -C and ObjectNet, no fine-tuning.

Command (after configs/linear_probe.py has finished in PROBE_DIR):
  python -m relic.main --config=configs/robustness.py --config.robustness.probe=PROBE_DIR \
      --workdir=DIR
  The encoder is the one the probe was fit on (probe_head.json; its weights are checked by
  fingerprint); --config.pretrained=PATH points at a moved copy of it.
Test sets (relic/data/robustness_sets.py, tfds names): imagenet_v2/matched-frequency,
  threshold-0.7, topimages; imagenet_r (predictions restricted to its 200 classes);
  imagenet_sketch; imagenet2012_corrupted/<corruption>_<severity> for the 15 benchmark
  corruptions x 5 severities (per corruption and mean); ObjectNet (not in tfds) with
  --config.robustness.objectnet_path=DIR (the unpacked objectnet-1.0 folder): its 113
  ImageNet-overlapping classes, each scored by the best logit of its ImageNet classes. A subset:
  --config.robustness.datasets=imagenet_v2_matched_frequency,imagenet_r
  (--config.robustness.corruptions=fog,snow for part of ImageNet-C).
Outputs: results.json / results.md; finished test sets are kept in results.partial.json so an
  interrupted run continues where it stopped.
Variants: 'runlocal': the built-in dataset's 'test' and 'test_ood' splits with the head of a
  runlocal probe: --config=configs/robustness.py:runlocal --config.robustness.probe=PROBE_DIR
Expected: ObjectNet top-1 25.9 for the ReLICv2 ResNet-50 (ReLIC 23.8, SimCLR 14.6)
  [paperswithcode entry]; the paper's numbers for the other sets are not reproduced here
  [unverified]. ImageNet-C alone is 75 x 50,000 images.
"""

from relic.config import check_config_args, parse_config_arg
from relic.presets import apply_eval_runlocal, imagenet_eval_config


def get_config(arg=None):
  options = parse_config_arg(arg)
  check_config_args(options, ("runlocal",), "robustness")
  config = imagenet_eval_config("robustness")
  if "runlocal" in options:
    apply_eval_runlocal(config)
  return config
