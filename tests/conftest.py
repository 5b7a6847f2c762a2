"""Test-wide settings and shared fixtures.

Settings: float32 matmuls at full precision so parity with PyTorch holds on any backend.

Tests that need PyTorch or the `sam2` reference package carry the `reference` marker (registered in
pyproject.toml), so `-m "not reference"` runs the rest and `-m reference` only them. Tests that use the reference
fixtures below are marked automatically.
"""

import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_created_cache = pytest.StashKey[str]()


def pytest_configure(config):
    """One persistent compilation cache for the whole run: the xdist workers and every process a test starts
    (which inherit the variable) compile each program once, e.g. the random init that every training run, in
    process or not, compiles alike. The first process to configure (the xdist controller) creates it; it is removed
    at the end unless it was given."""
    if _CACHE_ENV not in os.environ:
        os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="robotseg_jax_test_cache_")
        config.stash[_created_cache] = os.environ[_CACHE_ENV]
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])


def pytest_unconfigure(config):
    if created := config.stash.get(_created_cache, None):
        shutil.rmtree(created, ignore_errors=True)


# Fixtures that build sam2 models: a test that uses one (directly or through another fixture) needs the reference.
REFERENCE_FIXTURES = ("sam21_reference", "sam21_checkpoint_reference", "sam21_checkpoint")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the markers
def pytest_collection_modifyitems(items):
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in REFERENCE_FIXTURES):
            item.add_marker(pytest.mark.reference)


@pytest.fixture(scope="session")
def sam21_reference():
    """sam2's SAM 2.1 Hiera-T (`SAM2Base`, CPU, eval mode) at image size 256 with random perturbed weights (seed
    0): the reference of the module parity tests. Shared by the whole session; do not modify it."""
    from tests.reference import build_reference

    return build_reference("sam2.1_hiera_t", image_size=256, seed=0)


@pytest.fixture(scope="session")
def sam21_checkpoint_reference():
    """sam2's SAM 2.1 Hiera-T with random perturbed weights (seed 5), built at image size 128: the model whose
    weights `sam21_checkpoint` holds (the params do not depend on the image size). Do not modify it."""
    from tests.reference import build_reference

    return build_reference("sam2.1_hiera_t", image_size=128, seed=5)


@pytest.fixture(scope="session")
def sam21_checkpoint(sam21_checkpoint_reference, tmp_path_factory) -> str:
    """`sam21_checkpoint_reference`'s weights as an official SAM 2.1 `.pt` file (`{"model": state_dict}`)."""
    from tests.reference import save_official_checkpoint

    path = tmp_path_factory.mktemp("sam21_checkpoint") / "sam2.1_hiera_t.pt"
    save_official_checkpoint(sam21_checkpoint_reference, path)
    return str(path)


@pytest.fixture(params=["plain", "blocked"])
def attention_path(request, monkeypatch):
    """Runs a test with the model's attention as it runs at small sizes (plain) and in query blocks (blocked,
    forced by a small block size), so that parity tests at test sizes also cover the path large images take."""
    if request.param == "blocked":
        from robotseg_jax.modeling import attention

        monkeypatch.setattr(attention, "BLOCK_LOGITS", 4096)
    return request.param


@pytest.fixture(scope="session")
def sim_data(tmp_path_factory):
    """A tiny VRS-Sim TFDS dataset (6 videos of 4 frames at 64 px, all embodiments in train), as the `data`
    section of a training config; rendered once per test process (the training tests share an xdist worker)."""
    from ml_collections import config_dict

    from robotseg_jax.training import inputs

    root = tmp_path_factory.mktemp("sim")
    data = config_dict.ConfigDict(
        {"name": "vrs_sim", "data_dir": str(root / "tfds"),
         "sim": {"out": str(root / "layout"), "videos": 6, "frames": 4, "size": 64, "seed": 0,
                 "holdout_embodiment": None, "workers": 1}}
    )
    inputs.ensure_dataset(data, log=lambda _: None)
    return data
