"""An MD path-classification task made with our own OpenMM runs: which temperature was it?

Capped alanine (ACE-ALA-NME, the bundled ``alanine-dipeptide.pdb``) is simulated in vacuum
with amber14 at two (or more) temperatures; the class of a trajectory is its temperature. Each
trajectory is one :func:`openmm_geom.data.datagen.generate_reference` run with its own seed
(minimisation, Maxwell-Boltzmann velocities, ``equilibration_ps`` of Langevin dynamics, then
``n_frames`` frames ``save_interval_ps`` apart), so checkpointing and resuming come with it.
The runs are then converted to a path dataset (:mod:`openmm_geom.data.path_dataset`):

- ``paths``: positions of the heavy atoms (nm, ``C = 3``), in topology order, each frame
  superposed on one reference frame (``align``);
- ``adjacency``: the covalent bonds between heavy atoms (from the topology; hydrogens dropped);
- ``descriptors``: backbone phi and psi (rad, from mdtraj on the all-atom frames);
- ``is_test``: the independent test trajectories (a seed stream of their own).

Work files live in ``<out>.work/`` (one reference ``.npz`` per trajectory, each with its own
``.partial/`` checkpoints while it runs) and are removed once the dataset is written; calling
again with the same settings after an interruption resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Optional, Sequence, Union

import mdtraj
import numpy as np
import openmm.app as app

from .. import arguments as check
from ..version import __version__
from ..progress import progress_bar
from . import bundled
from .datagen import generate_reference, load_reference, reference_topology
from .path_dataset import save_path_dataset

__all__ = ["FORCEFIELD", "generate_md_dataset", "heavy_atom_graph"]

FORCEFIELD = ("amber14-all.xml",)
_MAX_OPENMM_SEED = 2**31 - 1
_POOL_STREAM, _TEST_STREAM = 0, 1


def heavy_atom_graph(topology: app.Topology) -> tuple:
    """Heavy atoms of a topology and the bonds between them.

    Parameters
    ----------
    topology : openmm.app.Topology

    Returns
    -------
    indices : numpy.ndarray of int64
        Topology indices of the atoms that are not hydrogen (in topology order).
    adjacency : numpy.ndarray of float32, (n_heavy, n_heavy)
        Symmetric 0/1, zero diagonal: 1 where two heavy atoms are bonded.
    names : list of str
        ``"RESNAME<id>:ATOM"`` of each heavy atom.
    """
    atoms = [atom for atom in topology.atoms()
             if atom.element is None or atom.element.symbol != "H"]
    position = {atom.index: i for i, atom in enumerate(atoms)}
    adjacency = np.zeros((len(atoms), len(atoms)), np.float32)
    for bond in topology.bonds():
        i, j = position.get(bond[0].index), position.get(bond[1].index)
        if i is not None and j is not None and i != j:
            adjacency[i, j] = adjacency[j, i] = 1.0
    names = [f"{atom.residue.name}{atom.residue.id}:{atom.name}" for atom in atoms]
    return np.asarray([atom.index for atom in atoms], np.int64), adjacency, names


def _openmm_seed(seed_sequence: np.random.SeedSequence) -> int:
    """An OpenMM seed in 1..2**31-1 (0 would mean "pick one at random")."""
    return int(seed_sequence.generate_state(1, np.uint64)[0] % _MAX_OPENMM_SEED) + 1


def _recorded_parameters(out: Path) -> Optional[dict]:
    """The ``parameters`` of an existing dataset's provenance, or None if unreadable."""
    try:
        with np.load(out, allow_pickle=False) as archive:
            return json.loads(str(archive["provenance"]))["parameters"]
    except (KeyError, ValueError, OSError, TypeError, zipfile.BadZipFile):
        return None


def generate_md_dataset(
    out: Union[str, os.PathLike],
    *,
    n_trajectories: int = 20,
    n_test: int = 8,
    n_frames: int = 500,
    save_interval_ps: float = 1.0,
    temperatures: Sequence[float] = (300.0, 450.0),
    seed: int = 0,
    equilibration_ps: float = 20.0,
    timestep_fs: float = 1.0,
    friction_per_ps: float = 1.0,
    pdb: Union[str, os.PathLike, None] = None,
    threads: Optional[int] = None,
    align: bool = True,
    progress: bool = True,
) -> Path:
    """Simulate capped alanine at several temperatures and write a path-classification dataset.

    Trajectory ``i`` of the cross-validation pool runs at ``temperatures[i % n_classes]``
    (its label) with an OpenMM seed drawn from ``SeedSequence(seed, spawn_key=(0, i))``; the
    test trajectories use ``(1, i)``. No constraints, so ``timestep_fs`` should stay at 1 fs.

    Parameters
    ----------
    out : path
        Output ``.npz``. If it exists and was made with the same settings it is returned
        as is; if made with other settings, FileExistsError.
    n_trajectories, n_test : int
        Cross-validation and independent test trajectories; multiples of
        ``len(temperatures)`` so that the classes are balanced (``n_test`` may be 0).
    n_frames : int
        Frames per trajectory.
    save_interval_ps : float
        Time between frames (ps); a whole number of time steps.
    temperatures : sequence of float
        Thermostat temperature (K) of each class; at least two, distinct.
    seed : int
        Non-negative seed of the whole dataset.
    equilibration_ps : float
        Langevin dynamics after minimisation and before the first frame (ps).
    timestep_fs, friction_per_ps : float
        Integrator settings (see :func:`~openmm_geom.data.datagen.generate_reference`).
    pdb : path, optional
        Another structure (with hydrogens, parametrisable by amber14, no periodic box needed)
        instead of capped alanine; the descriptors are then all its backbone phi followed by
        all its psi, as mdtraj finds them.
    threads : int, optional
        OpenMM CPU threads per run (default 1, which is bit-reproducible).
    align : bool
        Superpose every frame on the first frame of the first cross-validation trajectory
        (heavy atoms, mdtraj's least-squares fit) before storing the paths. In vacuum the
        molecule tumbles freely; unaligned, the paths are dominated by that rotation. Measured
        on 10 + 6 trajectories of 200 frames, 300 vs 450 K, 100 epochs (test accuracy;
        README): GraphLSTM 51% unaligned, 67% aligned; Deep Signature 51% and 58%. The dihedral
        descriptors do not depend on it.
    progress : bool
        Show a progress bar over trajectories (stderr).

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    out = Path(out)
    n_classes = len(temperatures)
    if n_classes < 2:
        raise ValueError(f"temperatures must list at least two temperatures (one per class), "
                         f"got {tuple(temperatures)}")
    temperatures = tuple(check.number("temperatures", t) for t in temperatures)
    if len(set(temperatures)) != n_classes:
        raise ValueError(f"temperatures must be distinct, got {temperatures}")
    n_trajectories = check.count("n_trajectories", n_trajectories, minimum=n_classes)
    n_test = check.count("n_test", n_test, minimum=0)
    for name, value in (("n_trajectories", n_trajectories), ("n_test", n_test)):
        if value % n_classes:
            raise ValueError(f"{name} must be a multiple of the {n_classes} temperatures so "
                             f"that the classes are balanced, got {value}")
    n_frames = check.count("n_frames", n_frames, minimum=2)
    seed = check.count("seed", seed, minimum=0)
    pdb = Path(bundled("alanine-dipeptide.pdb") if pdb is None else pdb)
    if not pdb.is_file():
        raise FileNotFoundError(f"PDB file not found: {pdb}")
    settings = dict(
        forcefield=FORCEFIELD, n_frames=n_frames,
        save_interval_ps=check.number("save_interval_ps", save_interval_ps),
        timestep_fs=check.number("timestep_fs", timestep_fs),
        friction_per_ps=check.number("friction_per_ps", friction_per_ps, sign="non-negative"),
        equilibration_ps=check.number("equilibration_ps", equilibration_ps, sign="non-negative"),
    )
    parameters = dict(
        settings, forcefield=list(FORCEFIELD), n_trajectories=n_trajectories, n_test=n_test,
        temperatures_K=list(temperatures), seed=seed, pdb_name=pdb.name, align=bool(align),
        pdb_sha256=hashlib.sha256(pdb.read_bytes()).hexdigest(),
    )
    if out.is_dir():
        raise ValueError(f"out must be a file path, but {out} is a directory")
    if out.exists():
        if _recorded_parameters(out) == json.loads(json.dumps(parameters)):
            return out
        raise FileExistsError(f"{out} already exists and was not made with these settings; "
                              f"delete it or choose another output path")

    jobs = []
    for stream, count, test in ((_POOL_STREAM, n_trajectories, False),
                                (_TEST_STREAM, n_test, True)):
        for i in range(count):
            openmm_seed = _openmm_seed(np.random.SeedSequence(seed, spawn_key=(stream, i)))
            jobs.append((test, i, i % n_classes, openmm_seed))

    work = out.with_name(out.name + ".work")
    runs = []
    with progress_bar(len(jobs), "MD trajectories", enabled=progress, unit="traj") as bar:
        for test, i, label, openmm_seed in jobs:
            run = work / f"{'test' if test else 'pool'}_{i:04d}_{temperatures[label]:g}K.npz"
            generate_reference(pdb, run, temperature_K=temperatures[label], seed=openmm_seed,
                               threads=threads, progress=False, **settings)
            runs.append(run)
            bar.update(1)

    topology = reference_topology(load_reference(runs[0], require_forces=False))
    heavy, adjacency, names = heavy_atom_graph(topology)
    md_topology = mdtraj.Topology.from_openmm(topology)
    n_heavy = len(heavy)
    paths = np.empty((len(jobs), n_frames, n_heavy, 3), np.float32)
    descriptors = None
    reference = mdtraj.Trajectory(load_reference(runs[0], require_forces=False)["positions"][:1],
                                  md_topology)
    for row, run in enumerate(runs):
        positions = load_reference(run, require_forces=False)["positions"]  # nm, float32
        trajectory = mdtraj.Trajectory(positions, md_topology)
        if align:
            trajectory.superpose(reference, atom_indices=heavy)
        paths[row] = trajectory.xyz[:, heavy]
        phi_atoms, phi = mdtraj.compute_phi(trajectory)
        psi_atoms, psi = mdtraj.compute_psi(trajectory)
        angles = np.concatenate([phi, psi], axis=1)
        if descriptors is None:
            if angles.shape[1] == 0:
                raise ValueError(f"{pdb} has no backbone phi/psi dihedrals for descriptors")
            descriptors = np.empty((len(jobs), n_frames, angles.shape[1]), np.float32)
        descriptors[row] = angles

    descriptor_names = ([f"phi{tuple(int(a) for a in atoms)}" for atoms in phi_atoms]
                        + [f"psi{tuple(int(a) for a in atoms)}" for atoms in psi_atoms])
    provenance = {
        "generator": "openmm_geom.data.md_classification.generate_md_dataset",
        "version": __version__,
        "parameters": parameters,
        "task": "class = thermostat temperature",
        "alignment": ("every frame superposed (heavy atoms, least squares) on frame 0 of pool "
                      "trajectory 0" if align else "none: lab-frame coordinates"),
        "label_temperatures_K": list(temperatures),
        "nodes": names,
        "descriptors": descriptor_names,
        "descriptor_unit": "rad (atom indices are all-atom topology indices)",
        "openmm_seeds": [{"test": test, "index": i, "label": label, "seed": openmm_seed}
                         for test, i, label, openmm_seed in jobs],
        "seeds": "OpenMM seed of pool trajectory i from numpy SeedSequence(seed, "
                 "spawn_key=(0, i)), test trajectory i from (1, i)",
    }
    save_path_dataset(
        out, paths=paths,
        labels=np.asarray([label for _, _, label, _ in jobs], np.int64),
        label_names=np.asarray([f"{t:g} K" for t in temperatures]),
        adjacency=np.broadcast_to(adjacency, (len(jobs), n_heavy, n_heavy)),
        is_test=np.asarray([test for test, *_ in jobs], bool),
        time_step=np.float64(settings["save_interval_ps"]),
        time_unit=np.asarray("ps"), channel_unit=np.asarray("nm"),
        descriptors=descriptors,
        provenance=np.asarray(json.dumps(provenance, sort_keys=True)))
    shutil.rmtree(work, ignore_errors=True)
    return out
