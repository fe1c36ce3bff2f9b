"""Class subsets of the ImageNet label space used by out-of-distribution test sets.

A test set that covers only some ImageNet classes is scored with the 1000-way ImageNet head
restricted to those classes: logits of the other classes are dropped before the arg-max, so a
prediction is always one of the classes the test set can contain (Hendrycks et al., the
ImageNet-R protocol). Labels stay in the 1000-class index space (tfds stores ImageNet-R labels
that way), so the restricted prediction is mapped back before it is compared.

``IMAGENET_R_WNIDS`` is the list of the 200 ImageNet-R classes from hendrycks/imagenet-r
(``imagenet_r_wnids`` in its ``eval.py``); ``IMAGENET_R_INDICES`` are their positions in the
standard sorted-wnid ImageNet order (the order of tfds's ``imagenet2012`` labels), the same
indices the reference code derives with ``[wnid in imagenet_r_wnids for wnid in all_wnids]``.
A test checks the two constants against tfds's label file.

A test set with its own label space whose classes each stand for one or more ImageNet classes
(ObjectNet: 113 classes over 125 ImageNet classes, relic/data/objectnet_classes.py) is scored
through *class groups*: each of its classes gets the highest logit of its ImageNet classes
(:func:`group_max`), and top-k is taken over those scores, so the other ImageNet classes can
never be predicted and a class is never counted twice in a top-5.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from relic.data.objectnet_classes import IMAGENET_GROUPS as OBJECTNET_GROUPS

IMAGENET_R_WNIDS: tuple[str, ...] = tuple("""
    n01443537 n01484850 n01494475 n01498041 n01514859 n01518878 n01531178 n01534433 n01614925 n01616318
    n01630670 n01632777 n01644373 n01677366 n01694178 n01748264 n01770393 n01774750 n01784675 n01806143
    n01820546 n01833805 n01843383 n01847000 n01855672 n01860187 n01882714 n01910747 n01944390 n01983481
    n01986214 n02007558 n02009912 n02051845 n02056570 n02066245 n02071294 n02077923 n02085620 n02086240
    n02088094 n02088238 n02088364 n02088466 n02091032 n02091134 n02092339 n02094433 n02096585 n02097298
    n02098286 n02099601 n02099712 n02102318 n02106030 n02106166 n02106550 n02106662 n02108089 n02108915
    n02109525 n02110185 n02110341 n02110958 n02112018 n02112137 n02113023 n02113624 n02113799 n02114367
    n02117135 n02119022 n02123045 n02128385 n02128757 n02129165 n02129604 n02130308 n02134084 n02138441
    n02165456 n02190166 n02206856 n02219486 n02226429 n02233338 n02236044 n02268443 n02279972 n02317335
    n02325366 n02346627 n02356798 n02363005 n02364673 n02391049 n02395406 n02398521 n02410509 n02423022
    n02437616 n02445715 n02447366 n02480495 n02480855 n02481823 n02483362 n02486410 n02510455 n02526121
    n02607072 n02655020 n02672831 n02701002 n02749479 n02769748 n02793495 n02797295 n02802426 n02808440
    n02814860 n02823750 n02841315 n02843684 n02883205 n02906734 n02909870 n02939185 n02948072 n02950826
    n02951358 n02966193 n02980441 n02992529 n03124170 n03272010 n03345487 n03372029 n03424325 n03452741
    n03467068 n03481172 n03494278 n03495258 n03498962 n03594945 n03602883 n03630383 n03649909 n03676483
    n03710193 n03773504 n03775071 n03888257 n03930630 n03947888 n04086273 n04118538 n04133789 n04141076
    n04146614 n04147183 n04192698 n04254680 n04266014 n04275548 n04310018 n04325704 n04347754 n04389033
    n04409515 n04465501 n04487394 n04522168 n04536866 n04552348 n04591713 n07614500 n07693725 n07695742
    n07697313 n07697537 n07714571 n07714990 n07718472 n07720875 n07734744 n07742313 n07745940 n07749582
    n07753275 n07753592 n07768694 n07873807 n07880968 n07920052 n09472597 n09835506 n10565667 n12267677
""".split())

IMAGENET_R_INDICES: tuple[int, ...] = (
    1, 2, 4, 6, 8, 9, 11, 13, 22, 23, 26, 29, 31, 39, 47, 63, 71, 76, 79, 84,
    90, 94, 96, 97, 99, 100, 105, 107, 113, 122, 125, 130, 132, 144, 145, 147, 148, 150, 151, 155,
    160, 161, 162, 163, 171, 172, 178, 187, 195, 199, 203, 207, 208, 219, 231, 232, 234, 235, 242, 245,
    247, 250, 251, 254, 259, 260, 263, 265, 267, 269, 276, 277, 281, 288, 289, 291, 292, 293, 296, 299,
    301, 308, 309, 310, 311, 314, 315, 319, 323, 327, 330, 334, 335, 337, 338, 340, 341, 344, 347, 353,
    355, 361, 362, 365, 366, 367, 368, 372, 388, 390, 393, 397, 401, 407, 413, 414, 425, 428, 430, 435,
    437, 441, 447, 448, 457, 462, 463, 469, 470, 471, 472, 476, 483, 487, 515, 546, 555, 558, 570, 579,
    583, 587, 593, 594, 596, 609, 613, 617, 621, 629, 637, 657, 658, 701, 717, 724, 763, 768, 774, 776,
    779, 780, 787, 805, 812, 815, 820, 824, 833, 847, 852, 866, 875, 883, 889, 895, 907, 928, 931, 932,
    933, 934, 936, 937, 943, 945, 947, 948, 949, 951, 953, 954, 957, 963, 965, 967, 980, 981, 983, 988,
)

# Name -> class indices (in the 1000-class ImageNet order) of the named subset.
CLASS_SUBSETS: dict[str, tuple[int, ...]] = {"imagenet_r": IMAGENET_R_INDICES}
# Name -> per test-set class, its ImageNet class indices (see the module docstring).
CLASS_GROUPS: dict[str, tuple[tuple[int, ...], ...]] = {"objectnet": OBJECTNET_GROUPS}


def subset_indices(name: str) -> tuple[int, ...] | None:
  """Indices of a named class subset; '' gives None (all classes)."""
  if not name:
    return None
  if name not in CLASS_SUBSETS:
    raise ValueError(f"Unknown class subset {name!r}; known: {sorted(CLASS_SUBSETS)}.")
  return CLASS_SUBSETS[name]


def restricted_topk(logits: jnp.ndarray, k: int,
                    class_indices: Sequence[int] | None = None) -> jnp.ndarray:
  """Top-k class predictions (..., k), in the full label space, among ``class_indices`` only.

  Args:
    logits: (..., num_classes) scores of the full head.
    k: how many predictions (clipped to the number of candidate classes).
    class_indices: the classes a prediction may be; None = every class.
  """
  if class_indices is None:
    return jax.lax.top_k(logits, min(k, logits.shape[-1]))[1]
  index = jnp.asarray(np.asarray(class_indices, np.int32))
  restricted = jnp.take(logits, index, axis=-1)
  return index[jax.lax.top_k(restricted, min(k, len(class_indices)))[1]]


def class_groups(name: str) -> tuple[tuple[int, ...], ...]:
  """The named class groups (:data:`CLASS_GROUPS`)."""
  if name not in CLASS_GROUPS:
    raise ValueError(f"Unknown class groups {name!r}; known: {sorted(CLASS_GROUPS)}.")
  return CLASS_GROUPS[name]


def group_max(logits: jnp.ndarray, groups: Sequence[Sequence[int]]) -> jnp.ndarray:
  """(..., len(groups)) scores: for each group the highest of its classes' logits."""
  width = max(len(g) for g in groups)
  # Pad every group to the same width by repeating its first class: max() is unchanged.
  index = np.array([list(g) + [g[0]] * (width - len(g)) for g in groups], np.int32)
  return jnp.max(jnp.take(logits, jnp.asarray(index), axis=-1), axis=-1)
