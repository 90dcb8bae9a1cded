"""rwsjax.progress: ETA arithmetic, duration formatting, the metric log and the log filter."""
import json
import logging as py_logging

import pytest

from rwsjax import progress


@pytest.mark.parametrize('seconds, text', [(0, '0s'), (12.4, '12s'), (59.6, '1m00s'),
                                           (245, '4m05s'), (3720, '1h02m'), (-3, '0s')])
def test_format_seconds(seconds, text):
  assert progress.format_seconds(seconds) == text


def test_rate_and_eta_count_from_the_resumed_start(monkeypatch):
  clock = iter([100.0, 110.0, 110.0, 110.0, 110.0, 110.0])
  monkeypatch.setattr(progress.time, 'perf_counter', lambda: next(clock))
  meter = progress.Progress('stage', total=100, start=40)
  assert meter.rate(60) == pytest.approx(2.0)  # 20 items in 10 s
  assert meter.eta(60) == pytest.approx(20.0)  # 40 left at 2/s
  assert meter.line(60, loss=0.123456) == 'stage 60/100  loss 0.1235  2/s  ETA 20s'


def test_eta_before_any_progress_is_unknown(monkeypatch):
  monkeypatch.setattr(progress.time, 'perf_counter', lambda: 5.0)
  meter = progress.Progress('stage', total=10)
  assert meter.line(0).endswith('ETA ?')


def test_metric_writer_truncates_a_resumed_stage(tmp_path):
  writer = progress.MetricWriter(str(tmp_path / 'metrics.jsonl'))
  for step in (1, 2, 3):
    writer.write(step, stage='a', loss=step)
  writer.write(1, stage='b', loss=9)
  writer.truncate_after(1, stage='a')
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert [(r['stage'], r['step'], r['loss']) for r in rows] == [('a', 1, 1.0), ('b', 1, 9.0)]


def _record(pathname, level, message):
  return py_logging.LogRecord('absl', level, pathname, 1, message, None, None)


@pytest.mark.parametrize('pathname, level, message, shown', [
    ('/site-packages/orbax/checkpoint/manager.py', py_logging.INFO, 'saving', False),
    ('/site-packages/orbax/checkpoint/manager.py', py_logging.WARNING, 'disk full', True),
    ('/site-packages/jax/_src/xla_bridge.py', py_logging.INFO,
     "Unable to initialize backend 'tpu'", False),
    ('/site-packages/tensorflow_datasets/core/features/image_feature.py', py_logging.WARNING,
     'OpenCV is not installed. We recommend using OpenCV', False),
    ('/site-packages/tensorflow_datasets/core/dataset_builder.py', py_logging.WARNING,
     "Using custom data configuration: ShapesConfig(name='train16-val8', num_train=16)", False),
    ('/site-packages/tensorflow_datasets/core/dataset_builder.py', py_logging.WARNING,
     'Dataset is corrupt', True),
    ('/repo/rwsjax/progress.py', py_logging.INFO, 'stage 1/2', True),
    ('/repo/rwsjax/rws/pipeline.py', py_logging.WARNING, 'OpenCV is not installed', True),
])
def test_library_filter(pathname, level, message, shown):
  assert progress._LibraryInfoFilter().filter(_record(pathname, level, message)) is shown


def test_tick_logs_every_interval_and_at_the_end(monkeypatch):
  now = [0.0]
  monkeypatch.setattr(progress.time, 'perf_counter', lambda: now[0])
  lines = []
  monkeypatch.setattr(progress.logging, 'info', lambda fmt, line: lines.append(line))
  meter = progress.Progress('stage', total=6, every_s=30.0)
  for done, seconds in enumerate([10, 29, 31, 45, 62, 63], 1):  # clock at each item's end
    now[0] = seconds
    meter.tick(done)
  # 31 s: 30 after the start; 62: 31 after the line at 31; 63: the last item.
  assert [line.split()[1] for line in lines] == ['3/6', '5/6', '6/6']
