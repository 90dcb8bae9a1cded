"""Tests for isimjax.pseudo: thresholded labels, the label store and streamed generation."""
import concurrent.futures
import functools
import os
import pickle
import time

import numpy as np
import pytest

from isimjax import crf
from isimjax import pseudo

NUM_FG = 4
HEIGHT, WIDTH = 24, 32


def _loop_labels(cams, image_labels, threshold):
  """Per-pixel oracle of docs/methods.md ISIM step 3: constant background score, image classes."""
  labels = np.zeros(cams.shape[1:], np.uint8)
  for y in range(cams.shape[1]):
    for x in range(cams.shape[2]):
      best, best_score = 0, np.float32(threshold)
      for c in range(cams.shape[0]):
        if image_labels[c] and cams[c, y, x] > best_score:
          best, best_score = c + 1, cams[c, y, x]
      labels[y, x] = best
  return labels


def _examples(n, seed=0):
  """(index, image, image labels) with two-colour images and one or two classes each."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    image[:, :WIDTH // 2] = rng.integers(0, 256, 3)
    image[:, WIDTH // 2:] = rng.integers(0, 256, 3)
    image_labels = np.zeros(NUM_FG, np.float32)
    image_labels[rng.choice(NUM_FG, size=rng.integers(1, 3), replace=False)] = 1
    out.append((i, image, image_labels))
  return out


def _batches(examples, batch_size):
  return [(np.array([e[0] for e in examples[s:s + batch_size]]),
           np.stack([e[1] for e in examples[s:s + batch_size]]),
           np.stack([e[2] for e in examples[s:s + batch_size]]))
          for s in range(0, len(examples), batch_size)]


class CountingCams:
  """A deterministic fake cam_fn (a pure function of the images) that counts its calls."""

  def __init__(self):
    self.calls = 0
    self.images_seen = 0

  def __call__(self, images, image_labels):
    self.calls += 1
    self.images_seen += images.shape[0]
    del image_labels
    y = np.arange(images.shape[1])[:, None]
    x = np.arange(images.shape[2])[None, :]
    cams = [((images[..., c % 3].astype(np.float64) * (c + 3) + 7 * y + 13 * x) % 97) / 96
            for c in range(NUM_FG)]
    return np.stack(cams, axis=1).astype(np.float32)


def _expected(examples, use_crf, threshold=0.3):
  cam_fn = CountingCams()
  return {i: pseudo.pseudo_label(image, cam_fn(image[None], labels[None])[0], labels,
                                 threshold=threshold, crf=use_crf)
          for i, image, labels in examples}


def test_labels_from_cams_matches_per_pixel_loop():
  rng = np.random.default_rng(0)
  cams = rng.random((5, 6, 7)).astype(np.float32)
  cams[1, 2, 3] = 0.3  # a tie with the background score goes to background
  for image_labels in ([0, 1, 0, 1, 1], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]):
    image_labels = np.array(image_labels)
    got = pseudo.labels_from_cams(cams, image_labels, threshold=0.3)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, _loop_labels(cams, image_labels, 0.3))
  np.testing.assert_array_equal(pseudo.labels_from_cams(cams, np.ones(5), threshold=0.8),
                                _loop_labels(cams, np.ones(5), 0.8))


def test_labels_from_cams_bad_shapes_raise():
  with pytest.raises(ValueError, match='image labels'):
    pseudo.labels_from_cams(np.zeros((3, 4, 4)), np.zeros(4))


def test_pseudo_label_crf_cleans_noisy_cams():
  image = np.zeros((HEIGHT, 64, 3), np.uint8)
  image[:, :32] = (200, 40, 40)
  image[:, 32:] = (40, 40, 200)
  truth = np.zeros((HEIGHT, 64), np.uint8)
  truth[:, 32:] = 3
  rng = np.random.default_rng(1)
  cams = np.zeros((NUM_FG, HEIGHT, 64), np.float32)
  cams[2] = np.where(truth == 3, 0.6, 0.1) + rng.uniform(-0.35, 0.35, size=truth.shape)
  image_labels = np.array([0, 0, 1, 0])
  raw = pseudo.pseudo_label(image, cams, image_labels, crf=False)
  np.testing.assert_array_equal(raw, pseudo.labels_from_cams(cams, image_labels))
  assert (raw != truth).mean() > 0.05
  np.testing.assert_array_equal(pseudo.pseudo_label(image, cams, image_labels), truth)


def test_store_round_trip_and_missing(tmp_path):
  store = pseudo.LabelStore(tmp_path / 'labels', 5)
  assert len(store) == 5 and not store.complete
  np.testing.assert_array_equal(store.missing(), np.arange(5))
  rng = np.random.default_rng(2)
  written = {i: rng.integers(0, 256, size=(3 + i, 4), dtype=np.uint8) for i in (0, 3)}
  written[3][0, 0] = 255
  for i, labels in written.items():
    store.write(np.int64(i), labels)
  for i, labels in written.items():
    got = store[i]
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, labels)
  np.testing.assert_array_equal(store.missing(), [1, 2, 4])
  assert sorted(os.listdir(tmp_path / 'labels')) == ['00000000.png', '00000003.png']
  reopened = pickle.loads(pickle.dumps(pseudo.LabelStore(tmp_path / 'labels', 5)))
  np.testing.assert_array_equal(reopened[3], written[3])
  for i in (1, 2, 4):
    store.write(i, np.zeros((2, 2), np.uint8))
  assert store.complete and store.missing().size == 0


def test_store_errors(tmp_path):
  store = pseudo.LabelStore(tmp_path, 3)
  with pytest.raises(FileNotFoundError, match='example 1'):
    store[1]
  with pytest.raises(IndexError, match=r'\[0, 3\)'):
    store[3]
  with pytest.raises(IndexError):
    store.write(-1, np.zeros((2, 2), np.uint8))
  with pytest.raises(ValueError, match='uint8'):
    store.write(0, np.zeros((2, 2), np.int32))
  with pytest.raises(ValueError, match='uint8'):
    store.write(0, np.zeros((2, 2, 1), np.uint8))


def test_store_write_is_atomic(tmp_path, monkeypatch):
  store = pseudo.LabelStore(tmp_path, 4)

  def failing_replace(src, dst):
    raise OSError(f'disk gone while moving {src} to {dst}')

  monkeypatch.setattr(os, 'replace', failing_replace)
  with pytest.raises(OSError, match='disk gone'):
    store.write(2, np.ones((3, 3), np.uint8))
  monkeypatch.undo()
  assert os.listdir(tmp_path) == []
  # A temporary file left by a killed run and unrelated files do not count as labels.
  (tmp_path / '.00000002.abc.tmp').write_bytes(b'partial')
  (tmp_path / 'notes.txt').write_text('x')
  (tmp_path / '00000009.png').write_bytes(b'')
  np.testing.assert_array_equal(store.missing(), [0, 1, 2, 3])


@pytest.mark.parametrize('use_crf', [False, True])
def test_generate_in_process(tmp_path, use_crf):
  examples = _examples(5)
  store = pseudo.LabelStore(tmp_path, 5)
  cam_fn = CountingCams()
  reports = []
  written = pseudo.generate_pseudo_labels(
      examples, cam_fn, store, crf=use_crf,
      progress=lambda done, total, rate, eta: reports.append((done, total, eta)))
  assert written == 5 and store.complete and cam_fn.calls == 5
  assert [r[:2] for r in reports] == [(d, 5) for d in range(1, 6)] and reports[-1][2] == 0
  for i, labels in _expected(examples, use_crf).items():
    np.testing.assert_array_equal(store[i], labels)


def test_generate_batches_equal_single_examples(tmp_path):
  examples = _examples(7, seed=3)
  store = pseudo.LabelStore(tmp_path, 7)
  cam_fn = CountingCams()
  pseudo.generate_pseudo_labels(_batches(examples, 3), cam_fn, store, crf=True)
  assert cam_fn.calls == 3
  for i, labels in _expected(examples, True).items():
    np.testing.assert_array_equal(store[i], labels)


def test_generate_resumes_after_a_kill(tmp_path):
  examples = _examples(6, seed=4)
  store = pseudo.LabelStore(tmp_path, 6)

  def killed_after(n):
    for k, example in enumerate(examples):
      if k == n:
        raise KeyboardInterrupt
      yield example

  with pytest.raises(KeyboardInterrupt):
    pseudo.generate_pseudo_labels(killed_after(4), CountingCams(), store)
  done_before = store.written()
  assert 0 < done_before.size < 6
  cam_fn = CountingCams()
  written = pseudo.generate_pseudo_labels(examples, cam_fn, store)
  assert written == cam_fn.calls == 6 - done_before.size
  # A batch whose examples are all stored is not sent to cam_fn.
  again = CountingCams()
  assert pseudo.generate_pseudo_labels(_batches(examples, 2), again, store) == 0
  assert again.calls == 0
  for i, labels in _expected(examples, True).items():
    np.testing.assert_array_equal(store[i], labels)


def test_generate_pool_equals_in_process(tmp_path):
  examples = _examples(8, seed=5)
  inline = pseudo.LabelStore(tmp_path / 'inline', 8)
  pooled = pseudo.LabelStore(tmp_path / 'pooled', 8)
  pseudo.generate_pseudo_labels(examples, CountingCams(), inline, crf=True, num_workers=0)
  written = pseudo.generate_pseudo_labels(_batches(examples, 3), CountingCams(), pooled,
                                          crf=True, num_workers=2)
  assert written == 8 and pooled.complete
  for i in range(8):
    np.testing.assert_array_equal(pooled[i], inline[i])


def test_generate_bounds_work_in_flight(tmp_path, monkeypatch):
  store = pseudo.LabelStore(tmp_path, 12)
  in_flight = []

  class SlowRecordingPool(concurrent.futures.ThreadPoolExecutor):
    """Slow workers; records how many submitted labels are not yet written at each submit."""
    submitted = 0

    def submit(self, fn, /, *args, **kwargs):
      SlowRecordingPool.submitted += 1
      in_flight.append(SlowRecordingPool.submitted - store.written().size)
      return super().submit(lambda: (time.sleep(0.02), fn(*args, **kwargs))[1])

  monkeypatch.setattr(pseudo, '_executor', SlowRecordingPool)
  pseudo.generate_pseudo_labels(_examples(12, seed=6), CountingCams(), store, num_workers=2)
  assert store.complete
  assert 2 <= max(in_flight) <= 2 * 2


@pytest.mark.parametrize('num_workers', [0, 2])
def test_stream_to_store_writes_each_task_result(tmp_path, num_workers):
  store = pseudo.LabelStore(tmp_path, 5)
  tasks = ((i, functools.partial(np.full, (2, 3), 10 * i, np.uint8)) for i in (0, 2, 3))
  seen = []
  written = pseudo.stream_to_store(tasks, store, num_workers=num_workers, total=3,
                                   progress=lambda done, total, *_: seen.append((done, total)))
  assert written == 3
  assert seen == [(1, 3), (2, 3), (3, 3)]
  np.testing.assert_array_equal(store.missing(), [1, 4])
  for i in (0, 2, 3):
    np.testing.assert_array_equal(store[i], np.full((2, 3), 10 * i))


def test_generate_checks_cam_shape(tmp_path):
  store = pseudo.LabelStore(tmp_path, 2)
  with pytest.raises(ValueError, match='cam_fn returned CAMs of shape'):
    pseudo.generate_pseudo_labels(_examples(2), lambda im, lab: np.zeros((1, 2, 3, 4)), store)


def test_generate_checks_examples(tmp_path):
  store = pseudo.LabelStore(tmp_path, 2)
  with pytest.raises(ValueError, match=r'outside \[0, 2\)'):
    pseudo.generate_pseudo_labels(_examples(3), CountingCams(), store)
  bad = [(0, np.zeros((HEIGHT, WIDTH, 3), np.float32), np.ones(NUM_FG))]
  with pytest.raises(ValueError, match='Each element of `examples`'):
    pseudo.generate_pseudo_labels(bad, CountingCams(), store)


def test_pseudo_label_crf_runs_over_background_and_image_classes():
  rng = np.random.default_rng(7)
  image = rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
  cams = rng.random((NUM_FG, HEIGHT, WIDTH)).astype(np.float32)
  cams[3] *= 0.2  # class 4 is in the image but never passes the threshold
  image_labels = np.array([0, 1, 0, 1])
  thresholded = pseudo.labels_from_cams(cams, image_labels)
  assert set(np.unique(thresholded)) == {0, 2}
  expected = crf.crf_refine_labels(image, thresholded, NUM_FG + 1, class_ids=[0, 2, 4])
  assert not np.array_equal(expected, crf.crf_refine_labels(image, thresholded, NUM_FG + 1))
  np.testing.assert_array_equal(pseudo.pseudo_label(image, cams, image_labels), expected)
