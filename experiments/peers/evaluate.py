"""One evaluation for both libraries: the same images, the same feature code, the same classifiers.

Every encoder under comparison is a torchvision ResNet by the time it is scored: relic's through
its own export (``relic.interop.export_torch``, checked against relic's forward pass), lightly's
as trained. Images: relic's evaluation pipeline on the folder's 'train' and 'test' splits (the
224/256 centre crop, bicubic to the 24 px training size), computed once and cached. Scores:
relic's L2 logistic regression (strength chosen on a 10% hold-out of train, then refit on all of
it) and relic's weighted kNN (k 20, T 0.07), on all train features.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
# torch and torchvision before anything that loads TensorFlow (relic's pipeline): torchvision
# loaded after TensorFlow crashes the process (a segmentation fault in triton, which
# torchvision's ops pull in through torch._dynamo).
import torch
import torchvision  # noqa: F401  pylint: disable=unused-import

FEATURE_BATCH = 1000
HOLDOUT_FRACTION = 0.1   # 5,000 of CIFAR-10's 50,000 choose the L2 strength


def eval_images(config, split: str, cache: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """(images float16 (N, S, S, 3) in [0, 1], labels) of ``split``, cached in ``cache``."""
  path = cache / f"{split}_{config.data.views.large.size}px.npz"
  if path.exists():
    with np.load(path, allow_pickle=False) as stored:
      return stored["images"], stored["labels"]
  from relic.data import pipeline  # pylint: disable=import-outside-toplevel

  images, labels = [], []
  for batch in pipeline.eval_batches(config, split=split, batch_size=500,
                                     image_size=config.data.views.large.size):
    valid = np.asarray(batch["valid"])
    images.append(np.asarray(batch["image"])[valid].astype(np.float16))
    labels.append(np.asarray(batch["label"])[valid])
  images, labels = np.concatenate(images), np.concatenate(labels).astype(np.int32)
  cache.mkdir(parents=True, exist_ok=True)
  np.savez(path, images=images, labels=labels)
  return images, labels


def torch_features(model, images: np.ndarray) -> np.ndarray:
  """Pooled features of a torchvision ResNet (``fc`` an identity) on NHWC images in [0, 1]."""
  from relic.interop.torch_models import run_nhwc  # pylint: disable=import-outside-toplevel

  model.eval()
  return np.concatenate([run_nhwc(model, images[i:i + FEATURE_BATCH].astype(np.float32))
                         for i in range(0, len(images), FEATURE_BATCH)])


def relic_encoder(workdir: pathlib.Path):
  """relic's pretrained encoder as a torchvision model, through relic's PyTorch export."""
  from relic.interop.export_torch import export_torch  # pylint: disable=import-outside-toplevel
  from relic.interop.torch_models import torch_resnet  # pylint: disable=import-outside-toplevel

  out = workdir / "export" / "encoder.pth"
  meta = export_torch(str(workdir), str(out), check_size=24)
  model = torch_resnet(**meta["torch_resnet"])
  model.load_state_dict(torch.load(out), strict=True)
  return model


def lightly_encoder(config, run_dir: pathlib.Path):
  from experiments.peers.lightly_train import build_networks  # pylint: disable=import-outside-toplevel

  model = build_networks(config)["backbone"]
  model.load_state_dict(torch.load(run_dir / "backbone.pth"), strict=True)
  return model


def random_encoder(config, seed: int):
  """The recipe's architecture at torchvision's initialisation (the untrained reference)."""
  from experiments.peers.lightly_train import build_networks  # pylint: disable=import-outside-toplevel

  torch.manual_seed(seed)
  return build_networks(config)["backbone"]


def score(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
          num_classes: int, seed: int = 0) -> dict:
  """Linear top-1 and kNN top-1 (%) of features on the test split."""
  from relic.evaluators import knn, linear  # pylint: disable=import-outside-toplevel

  model, chosen = linear.select_and_fit(train_x, train_y, num_classes=num_classes,
                                        val_fraction=HOLDOUT_FRACTION, seed=seed)
  return dict(linear_top1=linear.accuracy(model, test_x, test_y), linear_l2=chosen["l2"],
              knn_top1=knn.knn_top1(train_x, train_y, test_x, test_y, num_classes=num_classes,
                                    k=20, temperature=0.07),
              num_train=int(len(train_x)), num_test=int(len(test_x)))


def evaluate(model, data: dict[str, tuple[np.ndarray, np.ndarray]], out: pathlib.Path) -> dict:
  """Scores ``model`` on ``data`` ('train', 'test' arrays) and writes ``out`` (JSON)."""
  train_x = torch_features(model, data["train"][0])
  test_x = torch_features(model, data["test"][0])
  num_classes = int(data["train"][1].max()) + 1
  result = score(train_x, data["train"][1], test_x, data["test"][1], num_classes)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=1))
  return result
