"""Pseudo labels from CAMs (docs/methods.md, ISIM step 3), streamed to a label store on disk.

The main process computes CAMs (accelerator) batch by batch while a process pool thresholds
and CRF-refines earlier images on the host CPUs; finished labels are written one PNG per
example as they complete, so a killed generation resumes where it stopped. No JAX here: the
pool's worker processes import this module.
"""
import concurrent.futures
import functools
import multiprocessing
import operator
import os
import re
import tempfile

import numpy as np
from PIL import Image

from rwsjax import parts
from rwsjax import progress as progress_lib

from isimjax import crf as crf_lib

_LABEL_FILE = re.compile(r'^(\d+)\.png$')


def _threshold_argmax(cams, class_ids, threshold):
  """Argmax over [constant background score, cams]; (H, W) uint8 ids (ties go to background)."""
  background = np.full((1, *cams.shape[1:]), threshold, np.float32)
  scores = np.concatenate([background, cams.astype(np.float32)])
  ids = np.concatenate([[0], class_ids]).astype(np.uint8)
  return ids[np.argmax(scores, axis=0)]


def check_cams(cams, image_labels):
  """ValueError unless `cams` is (C, H, W) and `image_labels` (C,) (the image's classes)."""
  if np.ndim(cams) != 3 or np.shape(image_labels) != np.shape(cams)[:1]:
    raise ValueError(f'Expected CAMs (C, H, W) and image labels (C,), got {np.shape(cams)} and '
                     f'{np.shape(image_labels)}.')


def labels_from_cams(cams, image_labels, threshold=0.3):
  """Thresholded CAM labels (docs/methods.md ISIM step 3, before the CRF).

  The background score is the constant `threshold`; each pixel takes the argmax over
  [background, classes in the image]. Classes not in the image never win.

  Args:
    cams: (K-1, H, W) foreground CAMs normalised to [0, 1].
    image_labels: (K-1,) multi-hot image labels.
    threshold: background score.

  Returns:
    (H, W) uint8 labels in [0, K).
  """
  cams, image_labels = np.asarray(cams), np.asarray(image_labels)
  check_cams(cams, image_labels)
  present = np.flatnonzero(image_labels)
  return _threshold_argmax(cams[present], present + 1, threshold)


def _pseudo_label(image, cams, class_ids, threshold, use_crf, num_classes):
  """Threshold + optional CRF over background and `class_ids` (the image's classes)."""
  labels = _threshold_argmax(cams, class_ids, threshold)
  if not use_crf:
    return labels
  return crf_lib.crf_refine_labels(image, labels, num_classes,
                                   class_ids=np.concatenate([[0], class_ids]))


def pseudo_label(image, cams, image_labels, *, threshold=0.3, crf=True):
  """Pseudo label of one image (docs/methods.md ISIM step 3): threshold, then the dense CRF.

  As in the ISIM and IRNet code, the CRF runs over background plus the image's classes (a
  class whose CAM never passed the threshold still takes part), with the defaults of
  `isimjax.crf`.

  Args:
    image: (H, W, 3) uint8 RGB image.
    cams: (K-1, H, W) foreground CAMs normalised to [0, 1].
    image_labels: (K-1,) multi-hot image labels.
    threshold: background score.
    crf: whether to refine with the dense CRF.

  Returns:
    (H, W) uint8 labels in [0, K).
  """
  cams, image_labels = np.asarray(cams), np.asarray(image_labels)
  check_cams(cams, image_labels)
  present = np.flatnonzero(image_labels)
  return _pseudo_label(image, cams[present], present + 1, threshold, crf, cams.shape[0] + 1)


class LabelStore:
  """Label maps on disk, one PNG per example index; the `label_source` of the input pipeline.

  Random access by example index with len == dataset size. Writes go to a hidden temporary
  file in the same directory, then `os.replace`, so a label file is either complete or
  absent; temporaries left by a killed run are ignored.
  """

  def __init__(self, directory, size):
    if size < 0:
      raise ValueError(f'LabelStore size must be non-negative, got {size}.')
    self.directory = os.fspath(directory)
    self.size = int(size)
    os.makedirs(self.directory, exist_ok=True)

  def __len__(self):
    return self.size

  def path(self, index):
    """File of example `index`."""
    index = operator.index(index)
    if not 0 <= index < self.size:
      raise IndexError(f'Label index {index} is outside [0, {self.size}) of the store at '
                       f'{self.directory}.')
    return os.path.join(self.directory, f'{index:08d}.png')

  def __getitem__(self, index):
    path = self.path(index)
    try:
      with Image.open(path) as image:
        return np.asarray(image, np.uint8)
    except FileNotFoundError:
      raise FileNotFoundError(f'No label for example {index}: {path} does not exist; generate '
                              'the missing labels first.') from None

  def write(self, index, labels):
    """Atomically writes the (H, W) uint8 label map of example `index`."""
    path = self.path(index)
    labels = np.asarray(labels)
    if labels.dtype != np.uint8 or labels.ndim != 2:
      raise ValueError(f'Labels for {path} must be a uint8 (H, W) array, got {labels.dtype} '
                       f'{labels.shape}.')
    fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f'.{index:08d}.', suffix='.tmp')
    try:
      with os.fdopen(fd, 'wb') as f:
        Image.fromarray(labels).save(f, format='PNG')
      os.replace(tmp, path)
    except BaseException:
      os.unlink(tmp)
      raise

  def written(self):
    """Sorted indices whose label file exists."""
    found = (_LABEL_FILE.match(name) for name in os.listdir(self.directory))
    return np.array(sorted(i for i in (int(m.group(1)) for m in found if m) if i < self.size),
                    np.int64)

  def missing(self):
    """Sorted indices whose label is not written yet."""
    return np.setdiff1d(np.arange(self.size), self.written())

  @property
  def complete(self):
    return self.written().size == self.size


class LabelStorePart(parts.Part):
  """Examples [start, stop) of a `LabelStore`, indexed from 0, with its writes and counts: the
  labels one process makes (docs/design.md, multi-host). `whole` is the store of the split,
  which the training stream reads."""

  @property
  def directory(self):
    return self.whole.directory

  def write(self, index, labels):
    """`LabelStore.write` of part example `index`."""
    self.whole.write(self.split_index(index), labels)

  def written(self):
    """Sorted part indices whose label file exists."""
    found = self.whole.written()
    return found[(found >= self.start) & (found < self.stop)] - self.start

  def missing(self):
    """Sorted part indices whose label is not written yet."""
    return np.setdiff1d(np.arange(len(self)), self.written())

  @property
  def complete(self):
    return self.written().size == len(self)


class _InlineExecutor(concurrent.futures.Executor):
  """Runs each task when it is submitted (num_workers=0)."""

  def submit(self, fn, /, *args, **kwargs):
    future = concurrent.futures.Future()
    try:
      future.set_result(fn(*args, **kwargs))
    except Exception as e:
      future.set_exception(e)
    return future


def _executor(num_workers):
  """In-process for 0 workers, else a process pool that never forks the JAX process."""
  if num_workers == 0:
    return _InlineExecutor()
  method = 'forkserver' if 'forkserver' in multiprocessing.get_all_start_methods() else 'spawn'
  return concurrent.futures.ProcessPoolExecutor(
      num_workers, mp_context=multiprocessing.get_context(method))


class _Progress:
  """Counts written labels; reports rate and ETA to a callback, or to absl (`Progress.tick`)."""

  def __init__(self, total, callback):
    self.meter = progress_lib.Progress('pseudo labels', total)
    self.callback = callback
    self.done = 0

  def update(self):
    self.done += 1
    if self.callback is not None:
      self.callback(self.done, self.meter.total, self.meter.rate(self.done),
                    max(self.meter.eta(self.done), 0.0))
    else:
      self.meter.tick(self.done)


def _as_batch(item):
  """(indices (B,), images (B, H, W, 3) uint8, image labels (B, K-1)) from an example or batch."""
  index, image, image_labels = item
  indices, images, image_labels = np.asarray(index), np.asarray(image), np.asarray(image_labels)
  if indices.ndim == 0:
    indices, images, image_labels = indices[None], images[None], image_labels[None]
  batch = indices.shape[0]
  if (indices.ndim != 1 or images.shape[:1] != (batch,) or images.ndim != 4
      or images.shape[3] != 3 or images.dtype != np.uint8
      or image_labels.shape[:1] != (batch,) or image_labels.ndim != 2):
    raise ValueError(
        'Each element of `examples` must be (index, uint8 image (H, W, 3), image labels (K-1,)) '
        f'or a batch of them, got shapes {indices.shape}, {images.dtype} {images.shape}, '
        f'{image_labels.shape}.')
  return indices, images, image_labels


def _write_finished(pending, store, meter):
  """Waits for at least one task, writes every finished label and drops it from `pending`."""
  done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
  for future in done:
    store.write(pending.pop(future), future.result())
    meter.update()


def stream_to_store(tasks, store, *, num_workers, total, progress=None):
  """Runs the (index, task) pairs of `tasks` in `num_workers` processes (0: here) and writes
  store[index] = task() as each finishes; returns the number written.

  `tasks` is drawn from while the workers run (the accelerator computes the next batch), with
  at most max(2 * num_workers, 1) tasks waiting, so memory stays bounded. `total` is the count
  for progress: `progress(done, total, images_per_second, eta_seconds)` after each write, or
  the absl log when None.
  """
  meter = _Progress(total, progress)
  pending = {}
  with _executor(num_workers) as pool:
    for index, task in tasks:
      while len(pending) >= max(2 * num_workers, 1):
        _write_finished(pending, store, meter)
      pending[pool.submit(task)] = index
    while pending:
      _write_finished(pending, store, meter)
  return meter.done


def generate_pseudo_labels(examples, cam_fn, store, *, threshold=0.3, crf=True, num_workers=0,
                           progress=None):
  """Computes and stores the pseudo labels missing from `store` (docs/methods.md ISIM step 3).

  The main process calls `cam_fn` batch by batch (the accelerator) while `num_workers`
  processes threshold and CRF-refine earlier images (`pseudo_label`); each finished label is
  written to `store` at once. At most max(2 * num_workers, 1) images wait in the pool, so
  memory stays bounded and the CAM computation pauses only when the CPUs fall behind.
  Indices already in the store are skipped, and `cam_fn` is not called for a batch that has
  none missing, so rerunning after a kill computes only what is missing.

  Args:
    examples: iterable of (index, image (H, W, 3) uint8, image labels (K-1,)), or of batches
      (indices (B,), images (B, H, W, 3), image labels (B, K-1)), e.g. from a data pipeline.
    cam_fn: callable(images (B, H, W, 3) uint8, image labels (B, K-1)) -> numpy CAMs
      (B, K-1, H, W) normalised to [0, 1] (docs/methods.md ISIM step 2).
    store: a `LabelStore`.
    threshold: background score of the thresholding.
    crf: whether to refine with the dense CRF.
    num_workers: pool processes; 0 runs everything in this process.
    progress: optional callable(done, total, images_per_second, eta_seconds) called after
      each written label, `total` being the number missing at the start; by default progress
      goes to the absl log.

  Returns:
    The number of labels written.
  """
  todo = set(store.missing().tolist())

  def tasks():
    for item in examples:
      indices, images, image_labels = _as_batch(item)
      if indices.size and (indices.min() < 0 or indices.max() >= len(store)):
        raise ValueError(f'Example indices {indices.tolist()} fall outside [0, {len(store)}) of '
                         f'the label store at {store.directory}.')
      keep = [j for j, i in enumerate(indices.tolist()) if i in todo]
      if not keep:
        continue
      cams = np.asarray(cam_fn(images, image_labels))
      expected = (*image_labels.shape, *images.shape[1:3])
      if cams.shape != expected:
        raise ValueError(f'cam_fn returned CAMs of shape {cams.shape}, expected {expected} '
                         '(batch, classes without background, height, width).')
      for j in keep:
        present = np.flatnonzero(image_labels[j])
        todo.discard(int(indices[j]))
        yield int(indices[j]), functools.partial(
            _pseudo_label, images[j], cams[j, present], present + 1, threshold, crf,
            cams.shape[1] + 1)

  return stream_to_store(tasks(), store, num_workers=num_workers, total=len(todo),
                         progress=progress)
