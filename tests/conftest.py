"""Test-wide settings: float32 matmuls at full precision so parity with PyTorch holds on any backend."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import jax

jax.config.update("jax_default_matmul_precision", "highest")
