"""Loading any config file imports no jax, flax, orbax, grain or TensorFlow (docs/design.md,
Packages): a fresh interpreter loads every config, full and `:smoke`, and lists the heavy
modules it imported."""
import glob
import json
import os
import subprocess
import sys

from configs_util import ROOT

HEAVY = ('jax', 'jaxlib', 'flax', 'optax', 'orbax', 'grain', 'tensorflow', 'tensorflow_datasets')
SCRIPT = """
import glob, json, os, sys
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from configs_util import load_config
for path in sorted(glob.glob(os.path.join(sys.argv[1], "configs", "*.py"))):
  name = os.path.splitext(os.path.basename(path))[0]
  load_config(name)
  load_config(name, "smoke")
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_loading_every_config_imports_no_heavy_module():
  assert len(glob.glob(os.path.join(ROOT, 'configs', '*.py'))) >= 9
  result = subprocess.run([sys.executable, '-c', SCRIPT, ROOT], capture_output=True, text=True,
                          check=True, timeout=300)
  loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
  assert 'ml_collections' in loaded
  assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
