"""ISIM training losses (docs/methods.md, ISIM step 4; paper eq. 2-3)."""
import jax
import jax.numpy as jnp

from rwsjax.losses import IGNORE_LABEL, cross_entropy


def multilabel_soft_margin(class_logits, targets):
  """Multi-label soft margin loss, as torch.nn.MultiLabelSoftMarginLoss with mean reduction.

  loss = mean_n ( -1/C sum_c [y_nc log sigmoid(x_nc) + (1 - y_nc) log sigmoid(-x_nc)] ).

  Args:
    class_logits: (N, C) scores of the classification branch (C = K - 1 foreground classes).
    targets: (N, C) multi-hot image labels in {0, 1} (soft targets in [0, 1] are accepted).

  Returns:
    A scalar.
  """
  x = class_logits.astype(jnp.float32)
  y = targets.astype(jnp.float32)
  per_class = y * jax.nn.log_sigmoid(x) + (1.0 - y) * jax.nn.log_sigmoid(-x)
  return -jnp.mean(per_class)


def foreground_indicator(pseudo_labels, ignore_label=IGNORE_LABEL):
  """r_y of paper eq. 3 per image: 1 if any pixel is foreground, else 0.

  A pixel is foreground when its label is neither background (0) nor `ignore_label`, so an
  all-ignore label (e.g. a crop that is entirely padding) has r = 0. Its pixels are excluded
  from the cross-entropy mean anyway, so this choice does not change the loss value.

  Args:
    pseudo_labels: (N, H, W) integer labels.
    ignore_label: label value that is not foreground.

  Returns:
    (N,) float32 array of 0/1.
  """
  foreground = (pseudo_labels != 0) & (pseudo_labels != ignore_label)
  return jnp.any(foreground.reshape(foreground.shape[0], -1), axis=1).astype(jnp.float32)


def modified_cross_entropy(logits, pseudo_labels, ignore_label=IGNORE_LABEL):
  """Modified cross-entropy CE(logits * r_y, y) (paper eq. 2-3, docs/methods.md ISIM step 4).

  Images whose (augmented) pseudo label has no foreground pixel get zero logits: each of
  their non-ignored pixels contributes the constant log K to the mean and no gradient flows
  to the network through them. The mean is over all non-ignored pixels of the batch
  (`rwsjax.losses.cross_entropy`, as torch's CrossEntropyLoss).

  Args:
    logits: (N, H, W, K) segmentation scores.
    pseudo_labels: (N, H, W) integer labels in [0, K) or `ignore_label`.
    ignore_label: label value excluded from the loss.

  Returns:
    A scalar.
  """
  r = foreground_indicator(pseudo_labels, ignore_label)
  return cross_entropy(logits * r[:, None, None, None].astype(logits.dtype), pseudo_labels,
                       ignore_label)


def isim_loss(class_logits, targets, seg_logits, pseudo_labels, *, seg_weight=1.0):
  """ISIM objective: soft margin + seg_weight * modified CE (docs/methods.md ISIM steps 4 and 6).

  `seg_weight` is 1 once pseudo labels exist (summed 1:1) and 0 in the classification-only
  epochs; it may be a traced scalar.

  Args:
    class_logits: (N, K-1) classification branch scores.
    targets: (N, K-1) multi-hot image labels.
    seg_logits: (N, H, W, K) decoder scores.
    pseudo_labels: (N, H, W) pseudo labels (255 = ignore).
    seg_weight: weight of the segmentation term.

  Returns:
    (loss, {"cls_loss": ..., "seg_loss": ...}), ready for `jax.value_and_grad(has_aux=True)`.
  """
  cls_loss = multilabel_soft_margin(class_logits, targets)
  seg_loss = modified_cross_entropy(seg_logits, pseudo_labels)
  return cls_loss + seg_weight * seg_loss, {'cls_loss': cls_loss, 'seg_loss': seg_loss}
