"""Progress lines with ETA, and the JSONL metric writer (process 0 only).

JAX (and TFDS) is imported only where it is needed, so CPU worker processes (the CRF pool)
can use `Progress` without starting JAX.
"""
import json
import logging as py_logging
import os
import statistics
import time

from absl import logging

from rwsjax import eventlog

_CHATTY_LIBRARIES = ('/orbax/', '/grain/', '/tensorflow_datasets/', '/etils/',
                     '/jax/_src/xla_bridge.py')  # the last: "Unable to initialize backend"
# Library warnings that ask for nothing a user of this package can act on: TFDS decodes with
# PIL, as intended here, and every dataset setting is a builder config of its own (TFDS's
# warning prints the whole config, which the run record already holds).
_IDLE_WARNINGS = ('OpenCV is not installed', 'Using custom data configuration')


class _LibraryInfoFilter(py_logging.Filter):
  """Drops INFO-and-below records emitted from inside checkpointing/data libraries (and JAX's
  backend probing), and the library warnings of `_IDLE_WARNINGS`."""

  def filter(self, record):
    if any(part in record.pathname for part in _CHATTY_LIBRARIES):
      return record.levelno > py_logging.INFO and not record.getMessage().startswith(
          _IDLE_WARNINGS)
    return True


def quiet_library_logs():
  """Keeps the run's own progress lines readable: library INFO chatter is not shown, nor are
  TFDS's progress bars while it prepares a dataset (their lines name every temporary file)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (module docstring)
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(_LibraryInfoFilter())
  tfds.display_progress_bar(False)


def _process_index():
  import jax  # pylint: disable=g-import-not-at-top  (see the module docstring)
  return jax.process_index()


def format_seconds(seconds):
  """'1h02m', '4m05s' or '12s'."""
  seconds = max(0, int(round(seconds)))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  if minutes:
    return f'{minutes}m{secs:02d}s'
  return f'{secs}s'


class Progress:
  """Rate and ETA of a loop over `total` items that starts at item `start` (resumed runs)."""

  def __init__(self, name, total, start=0, every_s=30.0):
    self.name = name
    self.total = total
    self.start = start
    self.every_s = every_s
    self.t0 = self.last_line = time.perf_counter()

  def rate(self, done):
    """Items per second since the start."""
    elapsed = time.perf_counter() - self.t0
    return (done - self.start) / elapsed if elapsed > 0 else 0.0

  def eta(self, done):
    """Seconds left at the current rate (nan before any progress)."""
    rate = self.rate(done)
    return (self.total - done) / rate if rate > 0 else float('nan')

  def line(self, done, **values):
    """One log line: name, done/total, the given values, rate and ETA."""
    rate, eta = self.rate(done), self.eta(done)
    parts = [f'{self.name} {done}/{self.total}']
    parts += [f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}' for k, v in values.items()]
    parts.append(f'{rate:.3g}/s')
    parts.append(f"ETA {format_seconds(eta) if rate > 0 else '?'}")
    return '  '.join(parts)

  def log(self, done, **values):
    self.last_line = time.perf_counter()
    logging.info('%s', self.line(done, **values))

  def due(self, done):
    """Whether a line is due: the loop has ended (`done` == total) or `every_s` seconds have
    passed since the last line, so long loops report steadily and short ones once."""
    return done == self.total or time.perf_counter() - self.last_line >= self.every_s

  def tick(self, done, **values):
    """Logs a line when one is `due`."""
    if self.due(done):
      self.log(done, **values)


def logged(items, name, total):
  """Yields `items` (`total` of them), with `Progress.tick`'s lines along the way: dataset
  preparation reports its progress this way, TFDS's own bars being off."""
  progress = Progress(name, total)
  for done, item in enumerate(items, 1):
    yield item
    progress.tick(done)


def median_seconds(fn, repeats):
  """Median wall time of `fn()`, result blocked on, over `repeats` calls after one untimed call."""
  import jax  # pylint: disable=g-import-not-at-top  (see the module docstring)
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


class MetricWriter:
  """Appends one JSON object per logged step to `path` (metrics.jsonl) on process 0, and the
  same scalars to the TensorBoard run of the stage beside it (`rwsjax.eventlog`)."""

  def __init__(self, path):
    self.path = path
    self.enabled = _process_index() == 0
    self.events = None
    if self.enabled:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      self.events = eventlog.EventLog(os.path.dirname(os.path.abspath(path)))

  def truncate_after(self, step, stage=None):
    """Drops lines of `stage` logged after `step`: a resumed run logs those steps again."""
    if not self.enabled:
      return
    self.events.resume(stage or 'train', step)
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      rows = [json.loads(line) for line in f if line.strip()]
    keep = [r for r in rows if r.get('stage') != stage or r.get('step', 0) <= step]
    if len(keep) != len(rows):
      with open(self.path, 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in keep)

  def write(self, step, stage=None, **scalars):
    if not self.enabled:
      return
    row = {'step': int(step), 'stage': stage, 'time': time.time()}
    row.update({k: float(v) for k, v in scalars.items()})
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    self.events.scalars(stage or 'train', step, scalars)


def write_text(path, text):
  """Writes `text` atomically (temp file + rename), on process 0 only."""
  if _process_index() != 0:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path, obj):
  """Writes `obj` as indented JSON atomically (temp file + rename), on process 0 only."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True))

