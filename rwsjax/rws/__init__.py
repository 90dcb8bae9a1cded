"""Refined Weak Slices (paper 000, docs/methods.md RWS), built on the rwsjax toolkit.

  config    config.rws: every setting and switch with its default (no jax import)
  segcam    Seg-Grad-CAM heatmaps of several stages in one pass (eq. 1, 4)
  slices    sliding windows, their scores, the T rule and the weak-slice choice (eq. 2-3)
  fusion    selection and integration of local features (eq. 5-7)
  network   the RWS network: attention, weak windows and fusion of one batch (stage 3 and
            inference share it)
  analysis  the weak-slice analysis of a training split: T, weak boxes, round figures
  pipeline  stage 1, rounds of stage 2 and 3, the baseline, the report (`run`)
"""
