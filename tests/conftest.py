"""Test setup: several CPU devices so that data-parallel code runs as on an accelerator pod,
and the scripts of benchmarks/ importable by name (`import train_step`)."""
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'benchmarks'))

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402  (must follow the environment setup above)

jax.config.update('jax_num_cpu_devices', 4)
# The pipelines' smoke runs compile the same functions several times per session: reuse them.
jax.config.update('jax_compilation_cache_dir',
                  os.path.join(tempfile.gettempdir(), 'rwsjax-test-jax-cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
