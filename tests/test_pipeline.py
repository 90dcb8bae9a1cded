"""grain input pipelines: determinism, geometry of augmentation, eval padding, slice crops."""
import ml_collections
import numpy as np
import PIL.Image
import pytest

from rwsjax.data import pipeline

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
NUM_LABELS = 4


def _input_cfg(**overrides):
  cfg = {'crop_size': 8, 'scale_range': (0.5, 2.0), 'scale_mode': 'ratio', 'flip': True,
         'mean': MEAN, 'std': STD, 'eval_pad_size': None}
  return ml_collections.ConfigDict(dict(cfg, **overrides))


def _example(rng, shape):
  """Image whose red channel determines the label: label = red % 5 (0 = background)."""
  image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
  label = (image[..., 0] % 5).astype(np.uint8)
  labels = np.bincount(label.ravel(), minlength=5)[1:] > 0
  return {'image': image, 'segmentation': label[..., None], 'labels': labels}


def _source(n=10, shapes=None, seed=0):
  rng = np.random.default_rng(seed)
  return [_example(rng, shapes[i] if shapes else (6, 7)) for i in range(n)]


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def test_normalize_roundtrip_and_mean_maps_to_zero():
  cfg = _input_cfg()
  image = np.random.default_rng(0).integers(0, 256, (3, 4, 3), dtype=np.uint8)
  np.testing.assert_allclose(pipeline.denormalize(pipeline.normalize(image, cfg), cfg), image,
                             atol=1e-4)
  np.testing.assert_allclose(pipeline.normalize(np.array(MEAN), cfg), 0, atol=1e-6)
  np.testing.assert_allclose(pipeline.normalize(np.array([[255, 0, 0]]), cfg)[0, 0],
                             (255 - MEAN[0]) / STD[0], rtol=1e-6)


def test_train_batches_deterministic_and_resumable():
  source = _source()
  cfg = _input_cfg()
  ds = pipeline.train_dataset(source, cfg, seed=7, batch_size=3)
  again = pipeline.train_dataset(source, cfg, seed=7, batch_size=3)
  uninterrupted = [ds[s] for s in range(6)]
  for step in (0, 5):
    _assert_batches_equal(again[step], uninterrupted[step])
  resumed = pipeline.prefetch(again, 4)
  _assert_batches_equal(next(resumed), uninterrupted[4])
  _assert_batches_equal(next(resumed), uninterrupted[5])
  other = pipeline.train_dataset(source, cfg, seed=8, batch_size=3)
  assert not np.array_equal(other[0]['image'], uninterrupted[0]['image'])


def _concatenated(batches):
  return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


@pytest.mark.parametrize('processes', [2, 4])
def test_process_shares_make_the_single_process_batches(processes):
  """Each process's share of the stream, concatenated in process order at every step, is the
  batch one process with the whole global batch gets: training sees the same examples with the
  same augmentation whatever the process count."""
  source, cfg = _source(), _input_cfg()
  single = pipeline.train_dataset(source, cfg, seed=3, batch_size=8)
  shares = [pipeline.train_dataset(source, cfg, seed=3, batch_size=8 // processes,
                                   shard=(p, processes)) for p in range(processes)]
  for step in (0, 1, 4):  # step 1 crosses the first epoch's end (10 examples)
    _assert_batches_equal(_concatenated([share[step] for share in shares]), single[step])
  resumed = [next(pipeline.prefetch(share, 3)) for share in shares]
  _assert_batches_equal(_concatenated(resumed), single[3])
  boxes = np.array([[i % 10, 0, 0, 4, 4] for i in range(12)])
  crops = [pipeline.crop_dataset(source, boxes, cfg, seed=1, batch_size=4 // processes,
                                 out_size=4, shard=(p, processes)) for p in range(processes)]
  whole = pipeline.crop_dataset(source, boxes, cfg, seed=1, batch_size=4, out_size=4)
  for step in (0, 2, 3):
    _assert_batches_equal(_concatenated([c[step] for c in crops]), whole[step])


def test_train_batch_types_and_epochs():
  source = _source()
  ds = pipeline.train_dataset(source, _input_cfg(), seed=1, batch_size=5)
  batch = ds[0]
  assert batch['image'].dtype == np.float32 and batch['image'].shape == (5, 8, 8, 3)
  assert batch['segmentation'].dtype == np.int32 and batch['segmentation'].shape == (5, 8, 8)
  assert batch['labels'].dtype == np.float32 and batch['labels'].shape == (5, NUM_LABELS)
  assert batch['index'].dtype == np.int32 and batch['index'].shape == (5,)
  epochs = [np.concatenate([ds[2 * e]['index'], ds[2 * e + 1]['index']]) for e in range(3)]
  for order in epochs:
    assert sorted(order) == list(range(10))
  assert not np.array_equal(epochs[0], epochs[1])
  for row, index in zip(batch['labels'], batch['index']):
    np.testing.assert_array_equal(row, source[index]['labels'])


def test_pad_and_crop_without_scaling():
  source = _source(4)
  cfg = _input_cfg(crop_size=(9, 12), scale_range=(1.0, 1.0), flip=False)
  batch = pipeline.train_dataset(source, cfg, seed=0, batch_size=4)[0]
  for image, label, index in zip(batch['image'], batch['segmentation'], batch['index']):
    original = source[index]
    np.testing.assert_array_equal(label[:6, :7], original['segmentation'][..., 0])
    np.testing.assert_allclose(image[:6, :7], pipeline.normalize(original['image'], cfg))
    assert np.all(label[6:] == 255) and np.all(label[:, 7:] == 255)
    assert np.all(image[6:] == 0) and np.all(image[:, 7:] == 0)


def test_random_crop_is_a_random_window_of_the_image():
  yy, xx = np.mgrid[:20, :30]
  image = np.stack([xx * 8, yy * 12, np.zeros_like(xx)], -1).astype(np.uint8)
  source = [{'image': image, 'segmentation': ((xx + yy) % 5).astype(np.uint8)[..., None],
             'labels': np.ones(NUM_LABELS, bool)}] * 2
  cfg = _input_cfg(crop_size=(5, 6), scale_range=(1.0, 1.0), flip=False)
  ds = pipeline.train_dataset(source, cfg, seed=0, batch_size=2)
  offsets = set()
  for step in range(10):
    batch = ds[step]
    pixels = np.round(pipeline.denormalize(batch['image'], cfg)).astype(np.int32)
    for crop, label in zip(pixels, batch['segmentation']):
      y, x = crop[0, 0, 1] // 12, crop[0, 0, 0] // 8
      np.testing.assert_array_equal(crop, image[y:y + 5, x:x + 6])
      np.testing.assert_array_equal(label, source[0]['segmentation'][y:y + 5, x:x + 6, 0])
      offsets.add((y, x))
  assert len({y for y, _ in offsets}) > 3 and len({x for _, x in offsets}) > 3
  assert any(y != x for y, x in offsets)


def test_flip_keeps_image_and_label_aligned():
  source = [dict(e, image=np.broadcast_to(np.arange(7, dtype=np.uint8)[None, :, None] * 30,
                                          (6, 7, 3)).copy(),
                 segmentation=np.broadcast_to(np.arange(7, dtype=np.uint8)[None, :, None] % 5,
                                              (6, 7, 1)).copy())
            for e in _source(16)]
  cfg = _input_cfg(crop_size=(6, 7), scale_range=(1.0, 1.0), flip=True)
  batch = pipeline.train_dataset(source, cfg, seed=2, batch_size=16)[0]
  red = np.round(pipeline.denormalize(batch['image'], cfg)[..., 0]).astype(np.int32)
  np.testing.assert_array_equal(red // 30 % 5, batch['segmentation'])
  flipped = red[:, 0, 0] > red[:, 0, -1]
  assert 0 < flipped.sum() < 16


def test_scale_ranges():
  rng = np.random.default_rng(0)
  image = np.zeros((40, 30, 3), np.uint8)
  label = np.zeros((40, 30), np.uint8)
  cfg = _input_cfg(scale_range=(0.5, 2.0))
  heights = [pipeline.random_scale(image, label, cfg, rng)[1].shape[0] for _ in range(200)]
  assert 20 <= min(heights) < 25 and 75 < max(heights) <= 80
  cfg = _input_cfg(scale_mode='long_side', crop_size=16)
  sizes = [pipeline.random_scale(image, label, cfg, rng) for _ in range(300)]
  longs = [lab.shape[0] for _, lab in sizes]
  assert min(longs) == 16 and max(longs) == 32
  for scaled_image, scaled_label in sizes:
    assert scaled_image.shape[:2] == scaled_label.shape
    assert abs(scaled_label.shape[1] - 0.75 * scaled_label.shape[0]) <= 0.5 + 1e-9
  with pytest.raises(ValueError, match='config.input.scale_mode'):
    pipeline.random_scale(image, label, _input_cfg(scale_mode='short'), rng)


def test_scaled_label_is_nearest():
  rng = np.random.default_rng(1)
  source = _source(6)
  batch = pipeline.train_dataset(source, _input_cfg(crop_size=4), seed=3, batch_size=6)[0]
  assert set(np.unique(batch['segmentation']).tolist()) <= {0, 1, 2, 3, 4, 255}
  image = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
  label = np.arange(100, dtype=np.uint8).reshape(10, 10) // 10
  _, scaled = pipeline.random_scale(image, label, _input_cfg(scale_range=(2.0, 2.0)), rng)
  np.testing.assert_array_equal(scaled, np.repeat(np.repeat(label, 2, 0), 2, 1))


def test_label_source_replaces_segmentation():
  source = _source(6)
  pseudo = [np.full((6, 7), i % 4 + 1, np.uint8) for i in range(6)]
  cfg = _input_cfg(crop_size=(6, 7), scale_range=(1.0, 1.0))
  batch = pipeline.train_dataset(source, cfg, seed=0, batch_size=6, label_source=pseudo)[0]
  for label, labels, index in zip(batch['segmentation'], batch['labels'], batch['index']):
    assert np.all(label == index % 4 + 1)
    np.testing.assert_array_equal(labels, source[index]['labels'])
  with pytest.raises(ValueError, match='label_source has 5 items but the source has 6'):
    pipeline.train_dataset(source, cfg, seed=0, batch_size=2, label_source=pseudo[:5])
  bad = [np.zeros((3, 3), np.uint8)] * 6
  with pytest.raises(ValueError, match=r'label_source\[\d\] has shape \(3, 3\)'):
    pipeline.train_dataset(source, cfg, seed=0, batch_size=2, label_source=bad)[0]


def test_eval_padding_and_masks():
  shapes = [(5, 6), (7, 4), (3, 8), (6, 6), (4, 4)]
  source = _source(5, shapes=shapes)
  cfg = _input_cfg(eval_pad_size=(8, 9))
  ds = pipeline.eval_dataset(source, cfg, batch_size=2, num_batches=4)
  assert len(ds) == 4
  batches = [ds[i] for i in range(4)]
  mask = np.concatenate([b['mask'] for b in batches])
  np.testing.assert_array_equal(mask, [True] * 5 + [False] * 3)
  index = np.concatenate([b['index'] for b in batches])
  np.testing.assert_array_equal(index, [0, 1, 2, 3, 4, -1, -1, -1])
  images = np.concatenate([b['image'] for b in batches])
  labels = np.concatenate([b['segmentation'] for b in batches])
  assert images.shape == (8, 8, 9, 3) and labels.shape == (8, 8, 9)
  for i, (h, w) in enumerate(shapes):
    expected = np.full((8, 9), 255)
    expected[:h, :w] = source[i]['segmentation'][..., 0]
    np.testing.assert_array_equal(labels[i], expected)
    np.testing.assert_allclose(images[i, :h, :w], pipeline.normalize(source[i]['image'], cfg))
    assert np.all(images[i][expected == 255] == 0)
  assert np.all(labels[5:] == 255) and np.all(images[5:] == 0)
  assert len(pipeline.eval_dataset(source, cfg, batch_size=2)) == 3
  with pytest.raises(ValueError, match='num_batches=2 is too small'):
    pipeline.eval_dataset(source, cfg, batch_size=2, num_batches=2)


def test_eval_size_errors():
  source = _source(2, shapes=[(5, 6), (7, 4)])
  with pytest.raises(ValueError, match='set config.input.eval_pad_size'):
    pipeline.eval_dataset(source, _input_cfg(), batch_size=2)[0]
  with pytest.raises(ValueError, match='larger than config.input.eval_pad_size'):
    pipeline.eval_dataset(source, _input_cfg(eval_pad_size=(6, 6)), batch_size=2)[0]
  same = pipeline.eval_dataset(_source(3), _input_cfg(), batch_size=2)[0]
  assert same['image'].shape == (2, 6, 7, 3) and same['mask'].all()


def test_crop_dataset_matches_numpy_slicing():
  source = _source(3, shapes=[(12, 16)] * 3)
  cfg = _input_cfg(flip=False)
  boxes = np.array([[2, 1, 3, 7, 9], [0, 0, 0, 6, 6], [1, 6, 10, 12, 16]])
  ds = pipeline.crop_dataset(source, boxes, cfg, seed=0, batch_size=2, out_size=6,
                             augment=False)
  batches = [ds[0], ds[1]]
  np.testing.assert_array_equal(np.concatenate([b['mask'] for b in batches]),
                                [True, True, True, False])
  np.testing.assert_array_equal(np.concatenate([b['index'] for b in batches]), [0, 1, 2, -1])
  for j, (index, y0, x0, y1, x1) in enumerate(boxes):
    batch = batches[j // 2]
    crop_label = source[index]['segmentation'][y0:y1, x0:x1, 0]
    np.testing.assert_array_equal(batch['segmentation'][j % 2], crop_label)
    np.testing.assert_allclose(batch['image'][j % 2],
                               pipeline.normalize(source[index]['image'][y0:y1, x0:x1], cfg))
    present = np.bincount(crop_label.ravel(), minlength=5)[1:] > 0
    np.testing.assert_array_equal(batch['labels'][j % 2], present)


def test_crop_dataset_resizes_and_flips():
  source = _source(2, shapes=[(12, 16)] * 2)
  boxes = np.array([[1, 2, 4, 6, 10]])
  crop = source[1]['segmentation'][2:6, 4:10, 0]
  upsampled = np.repeat(np.repeat(crop, 2, 0), 2, 1)
  ds = pipeline.crop_dataset(source, boxes, _input_cfg(), seed=0, batch_size=1,
                             out_size=(8, 12), augment=False)
  np.testing.assert_array_equal(ds[0]['segmentation'][0], upsampled)
  image = PIL.Image.fromarray(source[1]['image'][2:6, 4:10]).resize((12, 8), PIL.Image.BILINEAR)
  np.testing.assert_allclose(ds[0]['image'][0], pipeline.normalize(np.asarray(image),
                                                                   _input_cfg()))
  train = pipeline.crop_dataset(source, boxes, _input_cfg(), seed=0, batch_size=4,
                                out_size=(8, 12))
  labels = np.concatenate([train[s]['segmentation'] for s in range(4)])
  flipped = [np.array_equal(label, upsampled[:, ::-1]) for label in labels]
  assert all(f or np.array_equal(label, upsampled) for f, label in zip(flipped, labels))
  assert 0 < sum(flipped) < len(labels)
  _assert_batches_equal(train[3], pipeline.crop_dataset(
      source, boxes, _input_cfg(), seed=0, batch_size=4, out_size=(8, 12))[3])


def test_crop_dataset_errors():
  source = _source(1, shapes=[(12, 16)])
  with pytest.raises(ValueError, match=r'boxes has shape \(4,\)'):
    pipeline.crop_dataset(source, np.zeros(4), _input_cfg(), seed=0, batch_size=1, out_size=4)
  ds = pipeline.crop_dataset(source, [[0, 12, 5, 14, 9]], _input_cfg(), seed=0, batch_size=1,
                             out_size=4, augment=False)
  with pytest.raises(ValueError, match=r'boxes\[0\] = \[0, 12, 5, 14, 9\] does not start inside'):
    ds[0]


def test_crop_dataset_pads_boxes_past_the_edge():
  source = _source(1, shapes=[(12, 16)])
  ds = pipeline.crop_dataset(source, [[0, 8, 12, 16, 20]], _input_cfg(), seed=0, batch_size=1,
                             out_size=(8, 8), augment=False)
  label, image = ds[0]['segmentation'][0], ds[0]['image'][0]
  np.testing.assert_array_equal(label[:4, :4], source[0]['segmentation'][8:12, 12:16, 0])
  assert (label[4:] == 255).all() and (label[:, 4:] == 255).all()
  np.testing.assert_allclose(image[:4, :4], pipeline.normalize(source[0]['image'][8:12, 12:16],
                                                               _input_cfg()))
  assert np.abs(image[4:]).max() < 0.01 and np.abs(image[:, 4:]).max() < 0.01
