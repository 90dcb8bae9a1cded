"""Pseudo-label throughput (threshold + dense CRF + PNG write) with 1 and with N pool workers.

Runs `isimjax.pseudo.generate_pseudo_labels` on synthetic images with precomputed CAMs, so
only the host side is measured (pool start-up included, as in a real generation round), and
prints the median images/s over a few interleaved repeats for in-process, 1 worker and N
workers, with the N-to-1 ratio.

  python benchmarks/crf.py --size=320 --images=48 --repeats=3
"""
import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from isimjax import pseudo
from timing import quiet_mark

_SIZE = flags.DEFINE_integer('size', 320, 'Image height and width.')
_IMAGES = flags.DEFINE_integer('images', 48, 'Images per run.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Runs per setting; the median is reported.')
_WORKERS = flags.DEFINE_integer('workers', os.cpu_count() or 1, 'N, the larger pool size.',
                                lower_bound=1)
_CLASSES = flags.DEFINE_integer('classes', 21, 'K, classes including background.')
_CRF = flags.DEFINE_bool('crf', True, 'Refine with the dense CRF.')


def synthetic_example(rng, size, num_fg):
  """An image of coloured ellipses on a noisy background, its image labels and smooth CAMs."""
  yy, xx = np.mgrid[:size, :size] / size
  image = rng.normal(110, 20, size=(size, size, 3))
  image_labels = np.zeros(num_fg, np.float32)
  cams = np.zeros((num_fg, size, size), np.float32)
  for c in rng.choice(num_fg, size=rng.integers(1, 4), replace=False):
    cy, cx, ry, rx = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), *rng.uniform(0.1, 0.3, 2)
    dist = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    image[dist < 1] = rng.uniform(0, 255, 3) + rng.normal(0, 10, size=((dist < 1).sum(), 3))
    cams[c] = np.exp(-dist) * rng.uniform(0.6, 1.0, size=(size, size)) ** 0.2
    cams[c] /= cams[c].max() + 1e-5
    image_labels[c] = 1
  return np.clip(image, 0, 255).astype(np.uint8), image_labels, cams


def images_per_second(data, num_workers):
  """One generation run into a fresh store; returns images/s."""
  cams = iter([c for _, _, c in data])
  examples = [(i, image, labels) for i, (image, labels, _) in enumerate(data)]
  with tempfile.TemporaryDirectory() as directory:
    store = pseudo.LabelStore(directory, len(data))
    start = time.perf_counter()
    pseudo.generate_pseudo_labels(examples, lambda images, labels: next(cams)[None], store,
                                  crf=_CRF.value, num_workers=num_workers,
                                  progress=lambda *_: None)
    elapsed = time.perf_counter() - start
  return len(data) / elapsed


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  data = [synthetic_example(rng, _SIZE.value, _CLASSES.value - 1) for _ in range(_IMAGES.value)]
  print(f'{_IMAGES.value} images {_SIZE.value}x{_SIZE.value}, crf={_CRF.value}, '
        f'{os.cpu_count()} CPUs, median of {_REPEATS.value} runs')
  settings = list(dict.fromkeys([0, 1, _WORKERS.value]))

  def interleaved():  # so that load drift on the host hits all settings alike
    runs = {workers: [] for workers in settings}
    for _ in range(_REPEATS.value):
      for workers in settings:
        runs[workers].append(images_per_second(data, workers))
    return runs

  runs, mark = quiet_mark(interleaved)  # the pool's workers are a forkserver's children
  medians = {workers: float(np.median(r)) for workers, r in runs.items()}
  for workers in settings:
    name = 'in-process' if workers == 0 else f'{workers} worker(s)'
    print(f"{name:>14}: {medians[workers]:7.2f} images/s  (runs: "
          f"{', '.join(f'{r:.2f}' for r in runs[workers])})")
  print(f'ratio {_WORKERS.value} workers / 1 worker: '
        f'{medians[_WORKERS.value] / medians[1]:.2f}{mark}')


if __name__ == '__main__':
  app.run(main)
