"""The run record, and the two files every pipeline ends with.

`run_record` says what produced a run's numbers: the full resolved config, the seed, the
versions of the packages that decide the numbers, the git commit of the source, the devices
and the command line; a pipeline adds how each stage was made (`rwsjax.provenance`).
`write_results` writes it with the numbers into summary.json, and the results table into
results.md (docs/design.md, what a run writes).
"""
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

import jax
import ml_collections

from rwsjax import eventlog
from rwsjax.progress import write_json, write_text

SUMMARY_FILE = 'summary.json'
RESULTS_FILE = 'results.md'
# launch.py --mode=evaluate writes <EVAL_NAME>.json and <EVAL_NAME>.md.
EVAL_NAME = 'eval_{split}{tta}'
TABLE_FILES = (RESULTS_FILE, 'eval_*.md')  # the Markdown tables that runs write
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy')
# The directory that holds the rwsjax package: the repository root in a source checkout.
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_json(config):
  """`config.to_dict()` as JSON values: field references resolved, tuples as lists."""
  return json.loads(json.dumps(config.to_dict()))


def recorded_config(workdir):
  """The resolved config the finished run in `workdir` recorded in its summary.json, as a
  ConfigDict (lists, which JSON made of tuples, are tuples again); ValueError when there is no
  finished run."""
  path = os.path.join(workdir, SUMMARY_FILE)
  if not os.path.isfile(path):
    raise ValueError(f'{workdir} holds no {SUMMARY_FILE}: no run finished there (train it '
                     'with launch.py first).')
  with open(path) as f:
    recorded = json.load(f)['run']['config']
  as_tuples = lambda x: ({k: as_tuples(v) for k, v in x.items()} if isinstance(x, dict) else
                         tuple(as_tuples(v) for v in x) if isinstance(x, list) else x)
  return ml_collections.ConfigDict(as_tuples(recorded))


def versions():
  """{'python': version, package: version or None when not installed} for `PACKAGES`."""
  found = {'python': platform.python_version()}
  for name in PACKAGES:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      found[name] = None
  return found


def git_state(directory=SOURCE_ROOT):
  """{'commit': HEAD, 'dirty': tracked files changed} of the git work tree whose root is
  `directory`; None when `directory` is not such a root (an installed copy of the package) or
  git is missing."""
  def git(*args):
    return subprocess.run(['git', '-C', directory, *args], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()
  try:
    if os.path.realpath(git('rev-parse', '--show-toplevel')) != os.path.realpath(directory):
      return None
    return {'commit': git('rev-parse', 'HEAD'),
            'dirty': bool(git('status', '--porcelain', '--untracked-files=no'))}
  except (OSError, subprocess.SubprocessError):
    return None


def host_cpu(cpuinfo='/proc/cpuinfo'):
  """The host's CPU model ('model name' in `cpuinfo`, else `platform.processor()`, else None).

  Times of one config differ between hosts, and a virtual machine keeps its disk when it
  moves to another, so a run that was stopped and resumed can have stages timed on two."""
  try:
    with open(cpuinfo) as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or None


def device_info():
  """Platform and kind of the devices, local and global device counts, process count, and
  this process's host: its CPU model (`host_cpu`) and core count."""
  device = jax.devices()[0]
  return {'platform': device.platform, 'device_kind': device.device_kind,
          'local_devices': jax.local_device_count(), 'global_devices': jax.device_count(),
          'processes': jax.process_count(), 'host_cpu': host_cpu(),
          'host_cores': os.cpu_count()}


def run_record(config, argv=None):
  """JSON-ready record of what produced a run: 'config' (`config_json`), 'seed', 'versions',
  'git' (`git_state`, None outside a git checkout), 'devices' (`device_info`) and 'command'
  (`argv`, default sys.argv)."""
  return {'config': config_json(config), 'seed': config.seed, 'versions': versions(),
          'git': git_state(), 'devices': device_info(),
          'command': list(sys.argv if argv is None else argv)}


def write_results(workdir, config, summary, table, *, name=SUMMARY_FILE,
                  table_name=RESULTS_FILE, figures=True, made=None):
  """Writes `summary` with the run record under 'run' to summary.json (or `name`) and the
  Markdown `table` to results.md (or `table_name`) in `workdir` (process 0), and its mIoU
  values and, with `figures`, the workdir's figures to TensorBoard (`eventlog.log_results`);
  returns the summary as written. Pipelines write their figures first. `made`
  (`stage_runner.Runner.made_record`) adds the report's settings fingerprint and how each stage
  was made to the run record."""
  summary = dict(summary, run=dict(run_record(config), **(made or {})))
  write_json(os.path.join(workdir, name), summary)
  write_text(os.path.join(workdir, table_name), table.rstrip('\n') + '\n')
  if jax.process_index() == 0:
    eventlog.log_results(workdir, summary, figures=figures)
  return summary
