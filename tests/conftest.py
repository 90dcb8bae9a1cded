"""Test setup: several CPU devices so that data-parallel code runs as on an accelerator pod."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must follow the environment setup above)

jax.config.update("jax_num_cpu_devices", 4)
