"""TensorBoard event files of a run, written when tensorboardX is installed
(`pip install -e ".[tensorboard]"`; neither it nor the TensorBoard viewer needs TensorFlow).

Under `<workdir>/tensorboard/`, TensorBoard's "runs" are:

  <stage>/   one per training stage (`stage1`, `round_1/stage3`, `baseline`, `isim`, ...): every
             metric of metrics.jsonl at the stage's step (loss, grad_norm, the learning rates
             lr or lr_<group>, the loss function's own metrics), means over the steps since
             the previous log line as in metrics.jsonl;
  results/   every mIoU of summary.json as `<path in summary.json>/miou`, and the PNG figures
             of the workdir as images tagged by their path.

A stage resumed after a kill opens its run with a purge step, so TensorBoard hides the events
that the killed run logged after the restored checkpoint, as metrics.jsonl drops those lines.
Without tensorboardX nothing is written, and the log says so once.
"""
import os
import time

from absl import logging
import numpy as np
import PIL.Image

EVENTS_DIR = 'tensorboard'
RESULTS_RUN = 'results'
_said_off = []
_files_opened = []


def tensorboardx():
  """tensorboardX's (event_file_writer, summary, event_pb2) modules, or None when it is not
  installed (said once per process)."""
  try:
    from tensorboardX import event_file_writer, summary  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  except ImportError:
    if not _said_off:
      logging.info('TensorBoard event files are off: pip install -e ".[tensorboard]" '
                   '(tensorboardX) to write them.')
      _said_off.append(True)
    return None
  return event_file_writer, summary, event_pb2


class EventLog:
  """The TensorBoard runs of one workdir; a no-op without tensorboardX. Process 0 only.

  Events are written synchronously (tensorboardX's `EventsWriter`, no writer thread) and
  flushed after every call, so a killed run loses none that it logged.
  """

  def __init__(self, workdir):
    self.directory = os.path.join(workdir, EVENTS_DIR)
    self.modules = tensorboardx()
    self.writers = {}

  @property
  def enabled(self):
    return self.modules is not None

  def _writer(self, run, purge_step=None):
    """The event file of `run`, opened on first use under a name unique to this process and
    opening; a `purge_step` starts it with the session event that hides later steps."""
    if run not in self.writers:
      event_file_writer, _, event_pb2 = self.modules
      directory = os.path.join(self.directory, run)
      os.makedirs(directory, exist_ok=True)
      _files_opened.append(run)
      writer = event_file_writer.EventsWriter(
          os.path.join(directory, 'events'), f'.{os.getpid()}.{len(_files_opened)}')
      if purge_step is not None:
        writer.write_event(event_pb2.Event(step=purge_step, session_log=event_pb2.SessionLog(
            status=event_pb2.SessionLog.START)))
      self.writers[run] = writer
    return self.writers[run]

  def _write(self, run, step, summaries):
    writer = self._writer(run)
    event_pb2 = self.modules[2]
    for summary in summaries:
      writer.write_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
    writer.flush()

  def resume(self, run, step):
    """Opens `run` for a stage that starts (or resumes) at `step`: events it logged after
    `step` in an earlier, killed run are hidden (a purge step). Other runs' files close."""
    if not self.enabled:
      return
    self.close()
    self._writer(run, purge_step=step + 1 if step else None)

  def scalars(self, run, step, values):
    """{tag: number} at `step` of `run`."""
    if self.enabled:
      summary = self.modules[1]
      self._write(run, step, [summary.scalar(tag, float(v)) for tag, v in values.items()])

  def images(self, run, step, images):
    """{tag: (H, W, 3) uint8} at `step` of `run`."""
    if self.enabled:
      summary = self.modules[1]
      self._write(run, step, [summary.image(tag, image, dataformats='HWC')
                              for tag, image in images.items()])

  def close(self):
    for writer in self.writers.values():
      writer.close()
    self.writers = {}


def miou_values(summary, prefix=()):
  """{'<key>/<key>/miou': value} of every dict with a finite 'miou' inside `summary`."""
  found = {}
  for key, value in summary.items():
    if not isinstance(value, dict):
      continue
    path = prefix + (str(key),)
    miou = value.get('miou')
    if isinstance(miou, float) and np.isfinite(miou):
      found['/'.join(path + ('miou',))] = miou
    found.update(miou_values(value, path))
  return found


def is_figure(name):
  """Whether a file name is a figure's: a PNG not named by a number (ISIM's label stores name
  their PNGs by example index)."""
  stem, suffix = os.path.splitext(name)
  return suffix == '.png' and not stem.isdigit()


def figure_images(workdir):
  """{relative path without .png: RGB uint8 array} of the figures (`is_figure`) under
  `workdir`, outside the event directory."""
  images = {}
  for directory, subdirs, files in os.walk(workdir):
    subdirs[:] = sorted(d for d in subdirs if os.path.join(directory, d)
                        != os.path.join(workdir, EVENTS_DIR))
    for name in sorted(filter(is_figure, files)):
      path = os.path.join(directory, name)
      with PIL.Image.open(path) as image:
        images[os.path.relpath(path, workdir)[:-len('.png')]] = np.asarray(image.convert('RGB'))
  return images


def log_results(workdir, summary, *, figures=True):
  """Every mIoU of `summary` and, with `figures`, the workdir's PNG figures, into the
  'results' run at step 0."""
  events = EventLog(workdir)
  if not events.enabled:
    return
  events.scalars(RESULTS_RUN, 0, miou_values(summary))
  if figures:
    events.images(RESULTS_RUN, 0, figure_images(workdir))
  events.close()
