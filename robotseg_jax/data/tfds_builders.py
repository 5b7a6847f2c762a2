"""The project's TFDS builders (`datasets/vrs`, `datasets/vrs_sim`), loaded by file path, and building them.

    python -m robotseg_jax.data.tfds_builders {vrs,vrs_sim} --manual_dir LAYOUT_ROOT [--data_dir TFDS_DIR]

`datasets/` is deliberately not a Python package (it has no `__init__.py`): a top-level package named `datasets`
would shadow Hugging Face's `datasets` whenever the repo root is on sys.path. Each builder lives in
`datasets/<name>/<name>_dataset_builder.py` (the TFDS folder convention, so `Builder` is registered as `<name>`)
and is imported here under that module name, once per process. Reading a built dataset needs none of this:
`vrs_tfds.open_split(name, split, data_dir)` works from the files alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import tensorflow_datasets as tfds

from robotseg_jax import cli
from robotseg_jax.data import vrs_layout, vrs_tfds
from robotseg_jax.errors import UserError

DATASETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "datasets")
BUILDER_NAMES = ("vrs", "vrs_sim")


class UnknownDatasetError(UserError, ValueError):
    """A dataset name that has no builder here."""


def builder_class(name: str) -> type[tfds.core.GeneratorBasedBuilder]:
    """The `Builder` class of datasets/<name>/, registered with TFDS as `name`."""
    if name not in BUILDER_NAMES:
        raise UnknownDatasetError(f"unknown dataset {name!r}; expected one of {BUILDER_NAMES}")
    module_name = f"{name}_dataset_builder"
    if module_name not in sys.modules:  # a second import would register the builder twice, which TFDS rejects
        path = os.path.normpath(os.path.join(DATASETS_DIR, name, f"{module_name}.py"))
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return sys.modules[module_name].Builder


def build(name: str, manual_dir: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Builds every split found in `manual_dir` into `data_dir` (TFDS's default when None) as array_record files;
    a dataset already built there is left as it is. Raises VRSLayoutError, naming the path, when `manual_dir` is
    not a VRS layout or one of its files cannot be read."""
    builder = builder_class(name)(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():  # fail before TFDS prepares anything, naming the folder
        if not os.path.isdir(manual_dir):
            raise vrs_layout.VRSLayoutError(f"no manual dir (VRS layout folder) at {manual_dir}")
        vrs_tfds.available_splits(manual_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m robotseg_jax.data.tfds_builders", description=build.__doc__)
    parser.add_argument("name", choices=BUILDER_NAMES)
    parser.add_argument("--manual_dir", required=True, help="root of the VRS layout (holds train/, test/, ...)")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: TFDS's, ~/tensorflow_datasets)")
    args = parser.parse_args(argv)
    builder = build(args.name, args.manual_dir, args.data_dir)
    print(f"{args.name} at {builder.data_dir}: {builder.info.splits}")


if __name__ == "__main__":
    cli.run(main)
