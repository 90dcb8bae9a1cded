"""One image as a finished RWS run sees it, for a look in a notebook (docs/methods.md RWS 2-4,
11): the global model's Seg-Grad-CAM maps, A_i and Gamma, and the weak windows under the run's
T, computed as the RWS network computes them at inference (`network.weak_slices`).

  from rwsjax import api
  from rwsjax.rws import look
  run = api.load_run('runs/shapes_rws')
  view = look.look(run, 'photo.jpg')
  look.save_look('look.png', view, run.config)
"""
import functools
from typing import Any, NamedTuple

import jax
import numpy as np

from rwsjax import api
from rwsjax import data
from rwsjax import figures
from rwsjax import inference
from rwsjax import stages
from rwsjax.data import pipeline
from rwsjax.rws import network


class Look(NamedTuple):
  """One image through the RWS network (`look`); maps at the image's working size (h, w): the
  image with its long side shrunk to config.eval.max_side, as prediction sees it.

  image: uint8 (h, w, 3).
  prediction: (h, w) int32, the global model's classes: the regions A_i is restricted to.
  classes: (C,) int32 class of each Seg-Grad-CAM slot, -1 when empty.
  heatmaps: layer -> (C, h, w), H_i^c in [0, 1] (eq. 1).
  attention: layer -> (h, w), A_i (eq. 2).
  gamma: (h, w), Gamma (eq. 3).
  windows: (S, 4) int32 the weak windows (y0, x0, y1, x1), weakest first, cut to the image.
  threshold: T, a scalar or one per class.
  """
  image: np.ndarray
  prediction: np.ndarray
  classes: np.ndarray
  heatmaps: dict
  attention: dict
  gamma: np.ndarray
  windows: np.ndarray
  threshold: Any


@functools.lru_cache(maxsize=4)
def _weak_slices_fn(run):
  """`network.weak_slices` of `run`'s config, jitted once per run (global variables,
  threshold, padded images and their valid mask as arguments), as the RWS network calls it."""
  config = run.config
  model = stages.segmentation_model(config)
  return jax.jit(lambda g, t, x, v: network.weak_slices(model, g, t, x, config,
                                                        jax.random.key(config.seed), valid=v))


def look(run, image):
  """The `Look` of `image` (a path or a uint8 array, `api.read`) for the finished RWS run
  `run` (`api.load_run`)."""
  config = run.config
  if config.method != 'rws':
    raise ValueError(f'{run.workdir} is a {config.method!r} run; look needs an RWS run.')
  image = api.read(image)
  canvas, valid, (h, w) = inference.working_image(image, config.eval, config.input)
  canvas, valid = network.pad_for_windows(canvas, config), network.pad_for_windows(valid, config)
  net = run.predictor.variables
  found = jax.device_get(_weak_slices_fn(run)(net['global'], net['threshold'], canvas, valid))
  attention = found.attention
  windows = found.boxes[0][found.valid[0]]
  windows = np.minimum(windows, np.array([h, w, h, w], windows.dtype))
  shown = np.clip(np.round(pipeline.denormalize(canvas[0, :h, :w], config.input)), 0, 255)
  return Look(image=shown.astype(np.uint8),
              prediction=np.asarray(attention.regions[0, :h, :w], np.int32),
              classes=np.asarray(attention.result.class_ids[0]),
              heatmaps={name: np.asarray(m[0, :, :h, :w])
                        for name, m in attention.result.heatmaps.items()},
              attention={name: np.asarray(m[0, :h, :w]) for name, m in attention.maps.items()},
              gamma=np.asarray(attention.gamma[0, :h, :w]), windows=windows,
              threshold=np.asarray(net['threshold']))


def save_look(path, view, config):
  """A figure of a `Look` in `path` (PNG): the image with its weak windows | the global
  model's prediction | A_1 .. A_4 | Gamma (as the run's round_N/heatmaps.png draws them);
  returns the figure."""
  columns = [[view.image], [view.prediction]]
  columns += [[m] for m in view.attention.values()] + [[view.gamma]]
  titles = [f'{len(view.windows)} weak windows', 'prediction']
  titles += [f'A {name}' for name in view.attention] + ['Gamma (eq. 3)']
  return figures.save_grid(path, columns, titles, data.class_names(config.dataset),
                           value_label='attention', boxes=[view.windows])
