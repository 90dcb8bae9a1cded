"""The notebook front door: README's snippet runs on a finished RWS run; `api.load_run` reads
the run's own config and predicts what the RWS network predicts; `look` gives the network's
attention and the weak windows that a loop over windows finds; a run whose record does not
match its stages is refused."""
import json
import os
import re
import shutil

import numpy as np
import PIL.Image
import pytest

from configs_util import ROOT
from configs_util import load_config
from rwsjax import api
from rwsjax import data
from rwsjax import models
from rwsjax import preflight
from rwsjax.data import pipeline
from rwsjax.rws import look
from rwsjax.rws import network
from rwsjax.rws import pipeline as rws_pipeline
from rwsjax.rws import slices


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """(workdir, a validation image) of an RWS `:smoke` run without baseline and premise."""
  root = tmp_path_factory.mktemp('api')
  config = load_config('shapes_rws', 'smoke')
  config.dataset.data_dir = str(root / 'tfds')
  config.rws.baseline = False
  config.rws.premise = False
  workdir = str(root / 'run')
  rws_pipeline.run(config, workdir)
  image = data.load_source(config.dataset, config.dataset.eval_split)[0]['image']
  return workdir, np.asarray(image)


def readme_snippet():
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
    blocks = re.findall(r'```python\n(.*?)```', f.read(), re.S)
  [snippet] = [b for b in blocks if 'api.load_run' in b]
  return snippet


def test_the_readme_snippet_runs(finished, tmp_path, monkeypatch):
  workdir, image = finished
  (tmp_path / 'my_images').mkdir()
  PIL.Image.fromarray(image).save(tmp_path / 'my_images' / 'a.png')
  monkeypatch.chdir(tmp_path)
  scope = {}
  exec(readme_snippet().replace("'runs/shapes_rws'", repr(workdir)), scope)  # pylint: disable=exec-used
  assert scope['mask'].shape == image.shape[:2]
  assert (tmp_path / 'look.png').exists()
  np.testing.assert_array_equal(scope['mask'], scope['run'].predict(image))


def _window_oracle(prediction, attention, classes, boxes, threshold, rws_cfg, background):
  """Weak windows by a loop: a window is weak when a slotted class c other than the background
  fills at least min_pixels of it and its mean attention there is below T (T_c when T is one
  per class); weakest first."""
  weak = []
  for w, (y0, x0, y1, x1) in enumerate(boxes):
    region, values = prediction[y0:y1, x0:x1], attention[y0:y1, x0:x1]
    scores = [(values[region == c].mean(), c) for c in classes
              if c >= 0 and c != background and (region == c).sum() >= rws_cfg.min_pixels]
    low = [s for s, c in scores if s < (threshold[c] if np.ndim(threshold) else threshold)]
    if low:
      weak.append((min(low), w))
  return [boxes[w] for _, w in sorted(weak)]


def test_predict_and_look_are_the_networks(finished):
  workdir, image = finished
  run = api.load_run(workdir, eval={'pad_multiple': 32})  # the 32 x 32 image is not padded
  config = run.config
  assert config.method == 'rws' and config.rws.baseline is False
  model = models.make_model(config.model, config.dataset.num_classes)
  net = run.predictor.variables
  x = pipeline.normalize(image, config.input)[None]
  logits = network.rws_logits(model, net, x, config)
  np.testing.assert_array_equal(run.predict(image), np.argmax(logits[0], -1))
  [again] = run.predict([image])
  np.testing.assert_array_equal(again, run.predict(image))

  view = look.look(run, image)
  expected = network.attention_maps(model, net['global'], x,
                                    num_classes=config.dataset.num_classes,
                                    max_classes=config.rws.max_classes,
                                    valid=np.ones(x.shape[:3], bool))
  np.testing.assert_array_equal(view.image, image)
  np.testing.assert_array_equal(view.prediction, expected.regions[0])
  for name in expected.maps:
    np.testing.assert_allclose(view.attention[name], expected.maps[name][0], atol=1e-6)
    np.testing.assert_allclose(view.heatmaps[name], expected.result.heatmaps[name][0],
                               atol=1e-6)
  np.testing.assert_allclose(view.gamma, expected.gamma[0], atol=1e-6)
  boxes = slices.window_boxes(32, 32, config.rws.slice_size, config.rws.slice_stride)
  per_pixel = np.asarray(view.attention['layer4'])  # config.rws.attention = 'last'
  assert config.rws.attention == 'last'
  oracle = lambda t: _window_oracle(view.prediction, per_pixel, view.classes, boxes, t,
                                    config.rws, config.dataset.background_class)
  np.testing.assert_array_equal(view.windows.reshape(-1, 4),
                                np.reshape(oracle(view.threshold), (-1, 4)))
  # A T between the window scores, so that some windows are weak and some are not.
  scores = sorted({float(per_pixel[y0:y1, x0:x1][view.prediction[y0:y1, x0:x1] == c].mean())
                   for y0, x0, y1, x1 in boxes for c in view.classes
                   if c > 0 and (view.prediction[y0:y1, x0:x1] == c).sum()
                   >= config.rws.min_pixels})
  assert len(scores) >= 2, 'the smoke model predicts no foreground in enough windows'
  middle = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
  net = dict(net, threshold=np.float32(middle))
  run.predictor = run.predictor._replace(variables=net)
  some = look.look(run, image)
  expected_windows = oracle(middle)
  assert 0 < len(expected_windows) < len(boxes)
  np.testing.assert_array_equal(some.windows, np.asarray(expected_windows))


def test_load_run_refuses_what_it_cannot_use(finished, tmp_path):
  workdir, _ = finished
  with pytest.raises(preflight.UserInputError, match='holds no summary.json'):
    api.load_run(str(tmp_path))
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  summary_path = copy / 'summary.json'
  summary = json.loads(summary_path.read_text())
  summary['run']['config']['train']['lr'] *= 2
  summary_path.write_text(json.dumps(summary))
  with pytest.raises(preflight.UserInputError, match=r'other settings .*train\.lr'):
    api.load_run(str(copy))
  with pytest.raises(ValueError, match='not a file'):
    api.load_run(workdir).predict(str(tmp_path / 'missing.png'))
