"""rwsjax.eventlog: the TensorBoard runs of a workdir, read back record by record."""
import glob
import io
import os
import struct
import sys

from absl import logging
import numpy as np
import PIL.Image
from tensorboardX.proto import event_pb2

from rwsjax import eventlog
from rwsjax import progress


def read_events(run_dir):
  """Every Event of the event files in `run_dir`, file by file in name order (the TFRecord
  framing: length, its CRC, the record, its CRC)."""
  events = []
  for path in sorted(glob.glob(os.path.join(run_dir, 'events.out.tfevents.*'))):
    with open(path, 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      length, = struct.unpack('<Q', data[offset:offset + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[offset + 12:offset + 12 + length])
      events.append(event)
      offset += 12 + length + 4
  return events


def scalars(run_dir):
  """[(tag, step, value)] of the scalar events in `run_dir`."""
  return [(v.tag, e.step, v.simple_value) for e in read_events(run_dir)
          for v in e.summary.value if v.HasField('simple_value')]


def purge_steps(run_dir):
  return [e.step for e in read_events(run_dir) if e.HasField('session_log')]


def test_metric_writer_logs_each_stage_as_a_run_and_purges_a_resumed_one(tmp_path):
  writer = progress.MetricWriter(str(tmp_path / 'metrics.jsonl'))
  writer.truncate_after(0, stage='round_1/stage3')
  writer.write(1, stage='round_1/stage3', loss=2.5, lr=0.125)
  writer.write(2, stage='round_1/stage3', loss=2.0, lr=0.0625)
  writer.truncate_after(0, stage='baseline')
  writer.write(1, stage='baseline', loss=3.0, grad_norm=1.5)
  stage3 = tmp_path / eventlog.EVENTS_DIR / 'round_1' / 'stage3'
  assert scalars(stage3) == [('loss', 1, 2.5), ('lr', 1, 0.125), ('loss', 2, 2.0),
                             ('lr', 2, 0.0625)]
  assert scalars(tmp_path / eventlog.EVENTS_DIR / 'baseline') == [('loss', 1, 3.0),
                                                                  ('grad_norm', 1, 1.5)]
  assert purge_steps(stage3) == []
  resumed = progress.MetricWriter(str(tmp_path / 'metrics.jsonl'))
  resumed.truncate_after(1, stage='round_1/stage3')  # restored at step 1: step 2 is redone
  resumed.write(2, stage='round_1/stage3', loss=1.75, lr=0.0625)
  assert purge_steps(stage3) == [2]
  assert scalars(stage3)[-2:] == [('loss', 2, 1.75), ('lr', 2, 0.0625)]


def test_results_hold_every_miou_and_the_figures(tmp_path):
  figure = np.zeros((4, 6, 3), np.uint8)
  figure[1, 2] = (255, 0, 0)
  os.makedirs(tmp_path / 'round_1')
  PIL.Image.fromarray(figure).save(tmp_path / 'round_1' / 'heatmaps.png')
  os.makedirs(tmp_path / 'psa' / 'rw')
  PIL.Image.fromarray(figure[..., 0]).save(tmp_path / 'psa' / 'rw' / '00000003.png')  # labels
  summary = {'stage1': {'miou': 0.25, 'per_class_iou': {'a': 0.5}},
             'stages': {'psa_final': {'validation': {'miou': 0.5}}},
             'baseline': {'miou': float('nan')}, 'run': {'config': {'seed': 0}}}
  eventlog.log_results(str(tmp_path), summary)
  results = tmp_path / eventlog.EVENTS_DIR / eventlog.RESULTS_RUN
  assert sorted(scalars(results)) == [('stage1/miou', 0, 0.25),
                                      ('stages/psa_final/validation/miou', 0, 0.5)]
  images = {v.tag: v.image for e in read_events(results) for v in e.summary.value
            if v.HasField('image')}
  assert list(images) == [os.path.join('round_1', 'heatmaps')]
  decoded = np.asarray(PIL.Image.open(io.BytesIO(
      images['round_1/heatmaps'].encoded_image_string)))
  np.testing.assert_array_equal(decoded, figure)


def test_without_tensorboardx_nothing_is_written_and_the_log_says_so_once(tmp_path,
                                                                         monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorboardX', None)  # import fails
  monkeypatch.setattr(eventlog, '_said_off', [])
  said = []
  monkeypatch.setattr(logging, 'info', lambda message, *args: said.append(message % args))
  for _ in range(2):
    writer = progress.MetricWriter(str(tmp_path / 'metrics.jsonl'))
    writer.truncate_after(0, stage='stage1')
    writer.write(1, stage='stage1', loss=1.0)
  eventlog.log_results(str(tmp_path), {'stage1': {'miou': 0.5}})
  assert not os.path.exists(tmp_path / eventlog.EVENTS_DIR)
  assert len(said) == 1 and 'pip install -e ".[tensorboard]"' in said[0]
  assert os.path.getsize(tmp_path / 'metrics.jsonl') > 0
