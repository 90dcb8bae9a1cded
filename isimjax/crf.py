"""Dense CRF refinement on the host with pydensecrf (docs/methods.md, ISIM steps 3, 9 and 10).

Plain numpy and pydensecrf, no JAX: these functions run in worker processes of a pool.
"""
import dataclasses

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels, unary_from_softmax


@dataclasses.dataclass(frozen=True)
class CrfParams:
  """Pairwise terms and iteration count; the defaults are docs/methods.md ISIM step 3."""
  gaussian_sxy: float = 3.0
  gaussian_compat: float = 3.0
  bilateral_sxy: float = 50.0
  bilateral_srgb: float = 5.0
  bilateral_compat: float = 10.0
  iterations: int = 10


def _checked_image(image):
  """The image as a C-contiguous uint8 (H, W, 3) array; raises for another dtype or shape."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(
        f'CRF image must be a uint8 array of shape (H, W, 3), got {image.dtype} {image.shape}.')
  return np.ascontiguousarray(image)


def _inference(image, unary, params):
  """Mean-field marginals Q (n, H, W) of the dense CRF with unary energies (n, H*W)."""
  n = unary.shape[0]
  height, width = image.shape[:2]
  crf = dcrf.DenseCRF2D(width, height, n)
  crf.setUnaryEnergy(np.ascontiguousarray(unary, np.float32))
  crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
  crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb, rgbim=image,
                           compat=params.bilateral_compat)
  q = crf.inference(params.iterations)
  return np.asarray(q, np.float32).reshape(n, height, width)


def _compact_ids(labels, n_labels, class_ids):
  """Sorted CRF label ids and the label map re-indexed into positions of that list."""
  if class_ids is None:
    ids = np.unique(labels)
  else:
    ids = np.unique(np.asarray(class_ids))
    if (not ids.size or ids.size != np.size(class_ids)
        or not np.issubdtype(ids.dtype, np.integer)):
      raise ValueError(f'class_ids must be distinct integers, at least one, got {class_ids}.')
    if ids.size and (ids[0] < 0 or ids[-1] >= n_labels):
      raise ValueError(f'class_ids must lie in [0, {n_labels}), got {class_ids}.')
  compact = np.minimum(np.searchsorted(ids, labels), ids.size - 1)
  if not np.array_equal(ids[compact], labels):
    raise ValueError(f'The label map holds values missing from class_ids {ids.tolist()}.')
  return ids, compact


def crf_refine_labels(image, labels, n_labels, *, class_ids=None, gt_prob=0.7,
                      params=CrfParams()):
  """Dense CRF on a hard label map (docs/methods.md ISIM step 3), returns a (H, W) uint8 map.

  The CRF runs over the class ids in `class_ids` only (default: the ids present in `labels`),
  so an image labelled {0, 5, 12} uses a 3-label CRF: the label map is re-indexed to 0, 1, 2,
  refined with a labels unary (probability `gt_prob` for the given label, the rest spread
  over the other CRF labels) and mapped back to 0, 5, 12. Passing background plus the
  image-level classes as `class_ids` reproduces the ISIM/IRNet pipelines, where a class whose
  CAM never passed the threshold still takes part. A single id leaves the map unchanged.

  Args:
    image: (H, W, 3) uint8 RGB image.
    labels: (H, W) integer labels in [0, n_labels).
    n_labels: number of classes K of the dataset (at most 255, so that the result is uint8).
    class_ids: optional ids the CRF may assign; must contain every value of `labels`.
    gt_prob: confidence of the given label in the unary, in (0, 1).
    params: pairwise terms and iterations.
  """
  image = _checked_image(image)
  labels = np.asarray(labels)
  if labels.shape != image.shape[:2] or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"CRF labels must be an integer array of shape {image.shape[:2]} (the "
                     f"image's), got {labels.dtype} {labels.shape}.")
  if not 1 <= n_labels <= 255:
    raise ValueError(f'n_labels must be in [1, 255], got {n_labels}.')
  if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
    raise ValueError(f'CRF labels must lie in [0, {n_labels}), got values in '
                     f'[{labels.min()}, {labels.max()}].')
  if not 0.0 < gt_prob < 1.0:
    raise ValueError(f'gt_prob must lie in (0, 1), got {gt_prob}.')
  ids, compact = _compact_ids(labels, n_labels, class_ids)
  if ids.size < 2:
    return labels.astype(np.uint8)
  unary = unary_from_labels(compact, ids.size, gt_prob=gt_prob, zero_unsure=False)
  q = _inference(image, unary, params)
  return ids[np.argmax(q, axis=0)].astype(np.uint8)


def crf_refine_probs(image, probs, *, params=CrfParams()):
  """Dense CRF on per-class scores (docs/methods.md ISIM steps 9-10), returns Q (C, H, W) float32.

  The unary is -log(max(probs, 1e-5)); scores need not sum to one (PSA feeds CAMs with a
  background channel), and the returned marginals do.

  Args:
    image: (H, W, 3) uint8 RGB image.
    probs: (C, H, W) finite non-negative scores.
    params: pairwise terms and iterations.
  """
  image = _checked_image(image)
  probs = np.asarray(probs, np.float32)
  if probs.ndim != 3 or probs.shape[1:] != image.shape[:2] or probs.shape[0] < 1:
    raise ValueError(f'CRF probs must have shape (C, {image.shape[0]}, {image.shape[1]}) '
                     f'matching the image, got {probs.shape}.')
  if not np.all(np.isfinite(probs)) or probs.min() < 0:
    raise ValueError('CRF probs must be finite and non-negative.')
  return _inference(image, unary_from_softmax(probs), params)
