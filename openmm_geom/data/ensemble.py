"""Independent reference runs as tasks: ``openmm-geom datagen ... --trajectories N``.

:func:`generate_ensemble` runs N reference trajectories (:mod:`openmm_geom.data.datagen`, or
water boxes of :mod:`openmm_geom.data.water`) with seeds ``seed .. seed + N - 1``, one task
each (:mod:`openmm_geom.parallel`: in this process or on a Dask cluster), and writes a
manifest beside them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import openmm

from .. import arguments as check
from ..io import format_tag, sha256_of_bytes, write_json
from ..parallel import Task, TaskRunner
from ..version import __version__
from .datagen import check_reference_settings, check_structure_file, generate_reference
from .water import generate_water_reference

__all__ = ["generate_ensemble", "ENSEMBLE_MANIFEST"]


ENSEMBLE_MANIFEST = "manifest.json"


def _ensemble_member(kind: str, source, out: str, options: dict) -> dict:
    """One trajectory of :func:`generate_ensemble` (a task: runs here or on a Dask worker)."""
    if kind == "water":
        generate_water_reference(int(source), out, **options)
    else:
        generate_reference(source, out, **options)
    with np.load(out, allow_pickle=False) as archive:
        frames = int(archive["positions"].shape[0])
    return {"file": Path(out).name, "seed": int(options["seed"]), "frames": frames,
            "sha256": sha256_of_bytes(Path(out).read_bytes())}


def generate_ensemble(source, out_dir: Union[str, os.PathLike], trajectories: int, *,
                      water: bool = False, runner=None, progress: bool = False,
                      **options) -> Path:
    """``trajectories`` independent reference runs with seeds ``seed, seed + 1, ...``.

    Each is :func:`generate_reference` of ``source`` (a PDB), or with ``water``
    :func:`~openmm_geom.data.water.generate_water_reference` of ``source`` waters, written to
    ``out_dir/trajectory-KKK.npz`` and resumable on its own (``.partial/`` beside it). A
    ``runner`` (:class:`~openmm_geom.parallel.TaskRunner`) runs them as tasks, e.g. on a Dask
    cluster; without one they run in turn here. ``out_dir/manifest.json`` lists the files
    with their seeds, frames and sha256, the settings and the versions.

    Every setting (and the PDB) is checked before anything is written; a run interrupted at
    any point resumes with the same call (finished trajectories are kept).

    Returns
    -------
    pathlib.Path
        The manifest.
    """
    trajectories = check.count("trajectories", trajectories)
    seed = check.count("seed", options.pop("seed", 1), maximum=2**31 - trajectories)
    check_reference_settings(**{**options, "seed": seed + trajectories - 1})
    if water:
        check.count("water molecules", source)
        described = {"water_box": int(source), **{k: options[k] for k in ("density", "ion_pairs")
                                                  if k in options}}
    else:
        check_structure_file(source)  # missing or unreadable: refused here
        described = {"pdb": str(source),
                     "pdb_sha256": sha256_of_bytes(Path(source).read_bytes())}
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    options = {**options, "progress": False}
    tasks = [Task(f"trajectory-{k:03d}", ("water" if water else "pdb",
                                          int(source) if water else str(source),
                                          str(out_dir / f"trajectory-{k:03d}.npz"),
                                          {**options, "seed": seed + k}))
             for k in range(trajectories)]
    with (runner if runner is not None else TaskRunner(None)) as active:
        out_dir.mkdir(parents=True, exist_ok=True)  # once the cluster is up
        members = active.run(_ensemble_member, tasks, log_dir=out_dir / "logs",
                             progress=progress, description="trajectories")
        where = active.spec.describe() if active.spec is not None else "this process"
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()
                if k not in ("progress", "on_checkpoint")}
    return write_json(out_dir / ENSEMBLE_MANIFEST, {
        "format": format_tag("datagen-ensemble", 1), "source": described,
        "trajectories": members, "first_seed": seed, "settings": settings,
        "ran_on": where, "openmm_version": openmm.__version__,
        "openmm_geom_version": __version__})
