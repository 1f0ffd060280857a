"""All-atom reference data for force matching: OpenMM runs that save positions *and* forces.

:func:`generate_reference` runs Langevin dynamics of any PDB with an OpenMM force field and saves,
every ``save_interval_ps``, the positions and the instantaneous forces of the System.
:func:`load_reference` reads such a file (or one of the shared ``ala2_vacuum_300K_*.npz`` files)
and checks it; :func:`reference_topology` rebuilds the OpenMM topology stored in it.

File format (a NumPy ``.npz``; OpenMM units throughout)
-------------------------------------------------------
==================== ================== ========= =============================================
key                  shape              dtype     meaning
==================== ================== ========= =============================================
positions            (frames, atoms, 3) float32   nm, not wrapped into the periodic box
forces               (frames, atoms, 3) float32   kJ/mol/nm, total force of the System
potential_energies   (frames,)          float64   kJ/mol
box_vectors          (frames, 3, 3)     float64   nm, rows a, b, c (periodic systems only)
masses               (atoms,)           float64   amu, the System's particle masses
atomic_numbers       (atoms,)           int32     0 for particles without an element
temperature_K        ()                 float64   K
save_interval_ps     ()                 float64   ps between frames
timestep_fs          ()                 float64   fs
friction_per_ps      ()                 float64   1/ps
equilibration_ps     ()                 float64   ps run before the first frame
seed                 ()                 int64     integrator and velocity seed
forcefield           (n,)               str       OpenMM force-field XML names
openmm_version       ()                 str
topology_pdb         ()                 str       the input structure as PDB text
units                ()                 str       JSON: key -> unit
generation           ()                 str       JSON: every setting of the run
==================== ================== ========= =============================================

``positions`` and ``forces`` have exactly the layout of the shared reference files, so the two
kinds of file are interchangeable. The forces are the System's forces at the saved positions
(``getState(getForces=True)``); with constraints (``constraints`` or ``rigid_water``) they do
**not** include the constraint forces, which force matching needs: use ``constraints=None``
(the default) and, for systems with water, ``rigid_water=False`` with a water model that has
flexible parameters (e.g. ``amber14/tip3p.xml``).

Checkpoints
-----------
A run keeps its work in ``<out>.partial/`` next to the output: ``state.json`` (the settings and
the chunks done), ``equilibrated.chk`` (OpenMM checkpoint after equilibration) and
``chunk_NNNNNN.npz`` files of ``checkpoint_every`` frames, each holding the OpenMM checkpoint
taken after its last frame. Every file is written atomically and ``state.json`` is updated last,
so an interruption at any moment loses at most the frames since the last chunk. Calling
:func:`generate_reference` again with the same settings resumes; with other settings it refuses.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

from ..errors import FileFormatError, SimulationBlowUp
from .. import arguments as check
from ..threads import cpu_platform_properties
from ..io import (atomic_open, atomic_savez, atomic_write_bytes, check_format, format_tag,
                  npy_member, read_npz)
from ..progress import progress_bar

__all__ = [
    "UNITS",
    "check_reference_settings",
    "check_structure_file",
    "generate_reference",

    "load_reference",
    "reference_topology",
]

FORMAT = format_tag("reference", 1)
WORK_KIND, WORK_VERSION = "reference-work", 1

UNITS = {
    "positions": "nm",
    "forces": "kJ/mol/nm",
    "potential_energies": "kJ/mol",
    "box_vectors": "nm",
    "masses": "amu",
    "temperature_K": "K",
    "save_interval_ps": "ps",
    "timestep_fs": "fs",
    "friction_per_ps": "1/ps",
    "equilibration_ps": "ps",
}

_KJ_PER_MOL = unit.kilojoule_per_mole
_FORCE_UNIT = unit.kilojoule_per_mole / unit.nanometer
_CONSTRAINTS = {None: None, "hbonds": app.HBonds, "allbonds": app.AllBonds,
                "hangles": app.HAngles}
_MINIMISE_TOLERANCE = 10.0  # kJ/mol/nm, OpenMM's default
_FRAME_KEYS = ("positions", "forces", "potential_energies", "box_vectors")
_CHECK_EVERY = 1000  # equilibration steps between energy checks


# --- settings -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Recipe:
    """The settings that determine a run's output; a resumed run must match them exactly."""

    pdb_sha256: str
    forcefield: tuple
    n_frames: int
    save_interval_ps: float
    timestep_fs: float
    temperature_K: float
    friction_per_ps: float
    equilibration_ps: float
    seed: int
    constraints: Optional[str]
    nonbonded_cutoff_nm: float
    rigid_water: bool
    platform: str
    openmm_version: str

    def __post_init__(self):
        # both durations must be whole numbers of time steps: fail before any work is done
        _whole_steps(self.save_interval_ps, self.timestep_fs, "save_interval_ps")
        _whole_steps(self.equilibration_ps, self.timestep_fs, "equilibration_ps")

    @property
    def steps_per_frame(self) -> int:
        return _whole_steps(self.save_interval_ps, self.timestep_fs, "save_interval_ps")

    @property
    def equilibration_steps(self) -> int:
        return _whole_steps(self.equilibration_ps, self.timestep_fs, "equilibration_ps")

    def as_json_dict(self) -> dict:
        """The settings as they are stored in JSON (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _whole_steps(duration_ps: float, timestep_fs: float, name: str) -> int:
    """Number of time steps in ``duration_ps``; a ValueError unless it is a whole number."""
    steps = duration_ps * 1000.0 / timestep_fs
    whole = round(steps)
    if not math.isclose(steps, whole, rel_tol=1e-9, abs_tol=1e-9):
        raise ValueError(
            f"{name} = {duration_ps} ps is not a whole number of {timestep_fs} fs time steps "
            f"({steps:.6g} steps); choose a multiple of the time step"
        )
    return whole


def _constraints_name(constraints) -> Optional[str]:
    """Normalise ``constraints`` (None, a name, or an ``openmm.app`` constant) to a name."""
    if constraints is None:
        return None
    for name, value in _CONSTRAINTS.items():
        if value is not None and constraints is value:
            return name
    if isinstance(constraints, str) and constraints.lower() in _CONSTRAINTS:
        return constraints.lower()
    raise ValueError(
        f"constraints must be None, 'HBonds', 'AllBonds' or 'HAngles', got {constraints!r}"
    )


def _forcefield_names(forcefield) -> tuple:
    if isinstance(forcefield, (str, os.PathLike)):
        forcefield = (forcefield,)
    names = tuple(str(name) for name in forcefield)
    if not names:
        raise ValueError("forcefield: give at least one OpenMM force-field XML file, "
                         "e.g. ('amber14-all.xml',) or ('amber14-all.xml', 'amber14/tip3p.xml')")
    return names


# --- building the simulation ---------------------------------------------------------------

@dataclasses.dataclass
class _Structure:
    path: Path
    topology: app.Topology
    positions: np.ndarray  # nm
    sha256: str


def _read_structure(pdb) -> _Structure:
    """Read a PDB (or PDBx/mmCIF) file with clear errors for missing or unreadable files."""
    path = Path(pdb)
    if not path.is_file():
        raise FileNotFoundError(f"PDB file not found: {path}")
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    pdbx = path.suffix.lower() in (".cif", ".mmcif", ".pdbx")
    try:
        structure = (app.PDBxFile if pdbx else app.PDBFile)(str(path))
        positions = structure.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    except Exception as error:  # OpenMM's readers raise IndexError, AssertionError, ValueError...
        kind = "PDBx/mmCIF" if pdbx else "PDB"
        detail = f"{type(error).__name__}: {error}".rstrip(": ")
        raise ValueError(f"{path} could not be read as a {kind} file ({detail})") from error
    n_atoms = structure.topology.getNumAtoms()
    if n_atoms == 0:
        raise ValueError(f"{path} contains no atoms (is it a PDB file?)")
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (n_atoms, 3) or not np.isfinite(positions).all():
        raise ValueError(f"{path}: coordinates are missing or not finite")
    return _Structure(path, structure.topology, positions, sha256)


def _create_system(structure: _Structure, recipe: _Recipe) -> openmm.System:
    """The System: NoCutoff without a box, PME with ``nonbonded_cutoff_nm`` with one."""
    names = recipe.forcefield
    try:
        forcefield = app.ForceField(*names)
    except ValueError as error:
        if "Could not locate file" in str(error):
            raise FileNotFoundError(
                f"force field file not found: {error} (give OpenMM force-field names such as "
                f"'amber14-all.xml' and 'amber14/tip3p.xml', or paths to XML files)"
            ) from error
        raise ValueError(f"could not read force field {list(names)}: {error}") from error
    except Exception as error:  # malformed XML and friends
        raise ValueError(f"could not read force field {list(names)}: {error}") from error

    box = structure.topology.getPeriodicBoxVectors()
    options = dict(constraints=_CONSTRAINTS[recipe.constraints], rigidWater=recipe.rigid_water)
    if box is None:
        options["nonbondedMethod"] = app.NoCutoff
    else:
        widths = np.diag(np.asarray(box.value_in_unit(unit.nanometer)))
        if 2 * recipe.nonbonded_cutoff_nm > widths.min():
            raise ValueError(
                f"nonbonded_cutoff_nm = {recipe.nonbonded_cutoff_nm} nm is more than half the "
                f"periodic box of {structure.path} (box widths {np.round(widths, 4).tolist()} nm); "
                f"use a cutoff of at most {widths.min() / 2:.4g} nm or a larger box"
            )
        options["nonbondedMethod"] = app.PME
        options["nonbondedCutoff"] = recipe.nonbonded_cutoff_nm * unit.nanometer
    try:
        return forcefield.createSystem(structure.topology, **options)
    except Exception as error:
        raise ValueError(
            f"the force field {list(names)} cannot parametrise {structure.path}: {error} "
            f"(missing hydrogens, water or ion force field, or an unusual residue?)"
        ) from error


def _platform(name: str, threads: Optional[int]) -> tuple:
    """The OpenMM platform and its properties; threads only apply to the CPU platform."""
    try:
        platform = openmm.Platform.getPlatformByName(name)
    except Exception:
        available = [openmm.Platform.getPlatform(i).getName()
                     for i in range(openmm.Platform.getNumPlatforms())]
        raise ValueError(f"unknown OpenMM platform {name!r}; available: {available}") from None
    if name == "CPU":
        properties = cpu_platform_properties(threads)
        if threads == 1:
            # without it, one-thread PME runs of the same water box were not reproducible (with
            # openmm 8.5.1 about 1 run in 8 diverged from the others within 20 steps)
            properties["DeterministicForces"] = "true"
        return platform, properties
    if threads is not None:
        raise ValueError(f"threads applies to the CPU platform only, not to {name!r}")
    return platform, {}


def _atom_label(atom: app.Atom) -> str:
    return f"{atom.index} ({atom.residue.name}{atom.residue.id}:{atom.name})"


def _force_report(topology: app.Topology, positions: Optional[np.ndarray], forces: np.ndarray,
                  n_largest: int = 5) -> str:
    """Which atoms have non-finite positions/forces and which have the largest forces."""
    atoms = list(topology.atoms())
    bad = ~np.isfinite(forces).all(axis=1)
    if positions is not None:
        bad |= ~np.isfinite(positions).all(axis=1)
    parts = []
    if bad.any():
        labels = ", ".join(_atom_label(atoms[i]) for i in np.flatnonzero(bad)[:10])
        parts.append(f"{int(bad.sum())} atoms have non-finite positions or forces: {labels}"
                     + (", ..." if bad.sum() > 10 else ""))
    magnitude = np.where(bad, -1.0, np.linalg.norm(np.where(bad[:, None], 0.0, forces), axis=1))
    largest = [i for i in np.argsort(-magnitude)[:n_largest] if magnitude[i] >= 0]
    if largest:
        parts.append("largest forces: " + ", ".join(
            f"atom {_atom_label(atoms[i])} {magnitude[i]:.3g} kJ/mol/nm" for i in largest))
    return "; ".join(parts) + "."


class _Simulation:
    """An OpenMM Context with its integrator, stepping with checks for blow-ups.

    After every check that passes, the Context is checkpointed in memory; when a check fails,
    the run is replayed from there one step at a time to find the first bad step and the forces
    just before it.
    """

    def __init__(self, system: openmm.System, topology: app.Topology, recipe: _Recipe,
                 threads: Optional[int], work_dir: Path):
        self.topology = topology
        self.recipe = recipe
        self.work_dir = work_dir
        self.periodic = system.usesPeriodicBoundaryConditions()
        self.integrator = openmm.LangevinMiddleIntegrator(
            recipe.temperature_K * unit.kelvin, recipe.friction_per_ps / unit.picosecond,
            recipe.timestep_fs * unit.femtosecond)
        self.integrator.setRandomNumberSeed(recipe.seed)
        platform, properties = _platform(recipe.platform, threads)
        self.context = openmm.Context(system, self.integrator, platform, properties)
        self._good: Optional[bytes] = None  # checkpoint of the last state that passed a check

    def _arrays(self) -> tuple:
        """Positions (nm), forces (kJ/mol/nm), energy (kJ/mol) and box (nm) of the Context."""
        state = self.context.getState(getPositions=True, getForces=True, getEnergy=True)
        positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        forces = state.getForces(asNumpy=True).value_in_unit(_FORCE_UNIT)
        energy = state.getPotentialEnergy().value_in_unit(_KJ_PER_MOL)
        box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
        return np.asarray(positions), np.asarray(forces), float(energy), np.asarray(box)

    def _evaluate(self) -> tuple:
        """``(arrays, problem)``: the Context's arrays, and what is wrong with them or None."""
        try:
            arrays = self._arrays()
        except openmm.OpenMMException as error:  # e.g. "Particle coordinate is NaN"
            return None, f"OpenMM could not evaluate the forces ({str(error).splitlines()[0]})"
        positions, forces, energy, _ = arrays
        if not math.isfinite(energy):
            return arrays, f"the potential energy is {energy} kJ/mol"
        # float32 is what is saved: forces beyond its range count as blown up too
        for name, values in (("positions", positions), ("forces", forces)):
            if not np.isfinite(values.astype(np.float32)).all():
                return arrays, f"{name} are not finite (in float32)"
        return arrays, None

    def _step(self, n: int) -> Optional[str]:
        """Step ``n`` times; what went wrong, or None."""
        try:
            self.integrator.step(n)
        except openmm.OpenMMException as error:
            return f"OpenMM stopped ({str(error).splitlines()[0]})"
        return None

    def advance(self, n: int) -> tuple:
        """Step ``n`` times and return the checked arrays (see :meth:`_arrays`)."""
        problem = self._step(n)
        arrays = None
        if problem is None:
            arrays, problem = self._evaluate()
        if problem is not None:
            raise self._unstable(problem, n)
        self._good = self.context.createCheckpoint()
        return arrays

    def _unstable(self, problem: str, window: int) -> SimulationBlowUp:
        """Replay from the last good checkpoint to the first bad step and describe it."""
        step, last = self.context.getStepCount(), None
        if self._good is not None:
            self.context.loadCheckpoint(self._good)
            last = (self.context.getStepCount(), self._evaluate()[0])
            for _ in range(window):
                arrays, replay_problem = None, self._step(1)
                if replay_problem is None:
                    arrays, replay_problem = self._evaluate()
                if replay_problem is not None:
                    step, problem = self.context.getStepCount(), replay_problem
                    break
                last = (self.context.getStepCount(), arrays)
        try:
            positions = np.asarray(self.context.getState(getPositions=True)
                                   .getPositions(asNumpy=True).value_in_unit(unit.nanometer))
        except openmm.OpenMMException:
            positions = None
        parts = [f"the simulation became unstable at MD step {step}: {problem}."]
        if positions is not None and not np.isfinite(positions).all():
            bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
            atoms = list(self.topology.atoms())
            parts.append(f"{len(bad)} atoms have non-finite positions: "
                         + ", ".join(_atom_label(atoms[i]) for i in bad[:10])
                         + (", ..." if len(bad) > 10 else "") + ".")
        if last is not None and last[1] is not None:
            parts.append(f"At step {last[0]}, the last finite state, the "
                         + _force_report(self.topology, None, last[1][1]))
        parts.append("Common causes: a time step too large for unconstrained bonds to hydrogen "
                     "(use timestep_fs <= 1 without constraints), clashing atoms in the input "
                     "structure, or a force field that does not fit it. Frames saved so far "
                     f"are in {self.work_dir}.")
        return SimulationBlowUp(" ".join(parts))

    def prepare(self, positions_nm: np.ndarray) -> None:
        """Set the input positions, check their energy, minimise, and draw velocities."""
        self.context.setPositions(positions_nm)
        arrays, problem = self._evaluate()
        if problem is not None:
            report = "" if arrays is None else "; " + _force_report(self.topology, *arrays[:2])
            raise ValueError(f"the input structure cannot be simulated: {problem} (overlapping "
                             f"atoms?){report}")
        try:
            openmm.LocalEnergyMinimizer.minimize(self.context, _MINIMISE_TOLERANCE, 0)
        except openmm.OpenMMException as error:
            raise ValueError(f"energy minimisation of the input structure failed: {error}") \
                from error
        arrays, problem = self._evaluate()
        if problem is not None:
            raise ValueError(f"energy minimisation of the input structure failed: {problem}")
        self.context.setVelocitiesToTemperature(self.recipe.temperature_K * unit.kelvin,
                                                self.recipe.seed)
        self._good = self.context.createCheckpoint()

    def resume(self, checkpoint: bytes) -> None:
        """Continue from a checkpoint written by an earlier run."""
        try:
            self.context.loadCheckpoint(checkpoint)
        except openmm.OpenMMException as error:
            raise ValueError(f"cannot resume from the checkpoint in {self.work_dir} ({error}); "
                             f"delete {self.work_dir} to start over") from error
        self._good = checkpoint

    def equilibrate(self, steps: int, progress: bool) -> None:
        """Run ``steps`` steps, checking the state every ``_CHECK_EVERY`` steps."""
        with progress_bar(steps, "equilibrating", enabled=progress, unit="step") as bar:
            done = 0  # not bar.n: a disabled tqdm bar does not count
            while done < steps:
                n = min(_CHECK_EVERY, steps - done)
                self.advance(n)
                done += n
                bar.update(n)

    def frames(self, count: int, bar) -> dict:
        """Run ``count`` save intervals and return their frames (float32 positions/forces)."""
        n_atoms = self.topology.getNumAtoms()
        chunk = {
            "positions": np.empty((count, n_atoms, 3), np.float32),
            "forces": np.empty((count, n_atoms, 3), np.float32),
            "potential_energies": np.empty(count, np.float64),
        }
        if self.periodic:
            chunk["box_vectors"] = np.empty((count, 3, 3), np.float64)
        for i in range(count):
            positions, forces, energy, box = self.advance(self.recipe.steps_per_frame)
            chunk["positions"][i] = positions
            chunk["forces"][i] = forces
            chunk["potential_energies"][i] = energy
            if self.periodic:
                chunk["box_vectors"][i] = box
            bar.update(1)
        return chunk


# --- the work directory --------------------------------------------------------------------

class _WorkDir:
    """``<out>.partial/``: settings, the equilibrated checkpoint and chunks of frames.

    ``state.json`` is written last for every change, so it only ever names complete files.
    The directory is locked (``flock``) while a run uses it.
    """

    def __init__(self, path: Path, recipe: dict):
        self.path = path
        self.recipe = recipe
        self._lock = None
        self.state = {"format": format_tag(WORK_KIND, WORK_VERSION), "recipe": recipe, "equilibrated": False,
                      "chunks": []}

    def __enter__(self) -> "_WorkDir":
        self.path.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        state_file = self.path / "state.json"
        if state_file.exists():
            self._resume(state_file)
        else:
            self._write_state()
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _acquire_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no protection against two runs in one directory
            return
        self._lock = open(self.path / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise RuntimeError(f"another process is generating into {self.path}") from None

    def _resume(self, state_file: Path) -> None:
        try:
            state = json.loads(state_file.read_text())
            recorded = state["recipe"]
            if not isinstance(state["chunks"], list) or "equilibrated" not in state:
                raise KeyError("chunks/equilibrated")
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{state_file} is corrupt ({error}); delete {self.path} to start "
                             f"over") from None
        try:
            check_format(state.get("format"), WORK_KIND, (WORK_VERSION,), source=self.path)
        except FileFormatError as error:
            raise FileFormatError(f"{error}; delete it to start over") from None
        differences = [f"{key}: recorded {recorded.get(key)!r}, now {value!r}"
                       + (" (the PDB file changed)" if key == "pdb_sha256" else "")
                       for key, value in self.recipe.items() if recorded.get(key) != value]
        if differences:
            raise ValueError(
                f"{self.path} holds an interrupted run with different settings, so it cannot be "
                f"resumed ({'; '.join(differences)}). Call again with the recorded settings to "
                f"resume, or delete {self.path} to start over."
            )
        for index in range(len(state["chunks"])):
            if not self.chunk_path(index).is_file():
                raise ValueError(f"{self.chunk_path(index)} is missing although {state_file} "
                                 f"lists it; delete {self.path} to start over")
        self.state = state

    def _write_state(self) -> None:
        atomic_write_bytes(self.path / "state.json",
                           json.dumps(self.state, indent=1, sort_keys=True).encode())

    @property
    def equilibrated(self) -> bool:
        return bool(self.state["equilibrated"])

    @property
    def chunk_sizes(self) -> list:
        return list(self.state["chunks"])

    @property
    def frames_done(self) -> int:
        return sum(self.state["chunks"])

    def chunk_path(self, index: int) -> Path:
        return self.path / f"chunk_{index:06d}.npz"

    def latest_checkpoint(self) -> Optional[bytes]:
        """The OpenMM checkpoint to continue from, or None before equilibration."""
        if self.state["chunks"]:
            with np.load(self.chunk_path(len(self.state["chunks"]) - 1)) as chunk:
                return chunk["checkpoint"].tobytes()
        if self.equilibrated:
            return (self.path / "equilibrated.chk").read_bytes()
        return None

    def save_equilibrated(self, checkpoint: bytes) -> None:
        atomic_write_bytes(self.path / "equilibrated.chk", checkpoint)
        self.state["equilibrated"] = True
        self._write_state()

    def save_chunk(self, frames: dict, checkpoint: bytes) -> None:
        index = len(self.state["chunks"])
        payload = dict(frames, checkpoint=np.frombuffer(checkpoint, dtype=np.uint8))
        atomic_savez(self.chunk_path(index), **payload)
        self.state["chunks"].append(len(frames["positions"]))
        self._write_state()

    def iter_chunks(self, key: str) -> Iterator[np.ndarray]:
        """The chunks' ``key`` arrays in order (one chunk in memory at a time)."""
        for index, size in enumerate(self.state["chunks"]):
            with np.load(self.chunk_path(index)) as chunk:
                array = chunk[key]
            if len(array) != size:
                raise ValueError(f"{self.chunk_path(index)} holds {len(array)} frames, "
                                 f"state.json says {size}; delete {self.path} to start over")
            yield array


# --- writing the reference file ------------------------------------------------------------

def _write_reference(out: Path, work: _WorkDir, static: dict) -> None:
    """Stream the chunks and the static arrays into ``out``, atomically and byte-reproducibly."""
    n_frames = work.frames_done
    with np.load(work.chunk_path(0)) as first:
        frame_arrays = {key: (first[key].shape[1:], first[key].dtype)
                        for key in _FRAME_KEYS if key in first.files}
    with atomic_open(out) as handle, \
            zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, (tail, dtype) in frame_arrays.items():
            npy_member(archive, key, (n_frames, *tail), dtype, work.iter_chunks(key))
        for key, value in static.items():
            value = np.asarray(value)
            npy_member(archive, key, value.shape, value.dtype, [value])


def _static_arrays(recipe: _Recipe, system: openmm.System, structure: _Structure,
                   generation: dict) -> dict:
    """Everything in the output file but the per-frame arrays."""
    atoms = list(structure.topology.atoms())
    text = io.StringIO()
    app.PDBFile.writeFile(structure.topology, structure.positions * unit.nanometer, text,
                          keepIds=True)
    # drop OpenMM's "REMARK   1 CREATED WITH OPENMM ..., <date>" so that files are reproducible
    topology_pdb = "".join(line for line in text.getvalue().splitlines(keepends=True)
                           if not line.startswith("REMARK   1 CREATED WITH OPENMM"))
    masses = [system.getParticleMass(i).value_in_unit(unit.dalton)
              for i in range(system.getNumParticles())]
    return {
        "masses": np.asarray(masses, np.float64),
        "atomic_numbers": np.asarray([a.element.atomic_number if a.element else 0 for a in atoms],
                                     np.int32),
        "temperature_K": np.float64(recipe.temperature_K),
        "save_interval_ps": np.float64(recipe.save_interval_ps),
        "timestep_fs": np.float64(recipe.timestep_fs),
        "friction_per_ps": np.float64(recipe.friction_per_ps),
        "equilibration_ps": np.float64(recipe.equilibration_ps),
        "seed": np.int64(recipe.seed),
        "forcefield": np.asarray(recipe.forcefield, dtype=str),
        "openmm_version": np.asarray(recipe.openmm_version),
        "topology_pdb": np.asarray(topology_pdb),
        "units": np.asarray(json.dumps(UNITS, sort_keys=True)),
        "generation": np.asarray(json.dumps(generation, sort_keys=True)),
    }


def _finished_output(out: Path, recipe: dict) -> bool:
    """True if ``out`` is the result of these settings; FileExistsError if of others."""
    try:
        with np.load(out, allow_pickle=False) as archive:  # reads only this member
            recorded = json.loads(str(archive["generation"]))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile):
        recorded = {}
    if all(recorded.get(key) == value for key, value in recipe.items()):
        return True
    raise FileExistsError(
        f"{out} already exists and was not made with these settings; delete it or choose "
        f"another output path"
    )


# --- public API ----------------------------------------------------------------------------

def generate_reference(
    pdb: Union[str, os.PathLike],
    out: Union[str, os.PathLike],
    *,
    forcefield: Union[str, Sequence[str]] = ("amber14-all.xml",),
    n_frames: int,
    save_interval_ps: float = 1.0,
    timestep_fs: float = 1.0,
    temperature_K: float = 300.0,
    friction_per_ps: float = 1.0,
    equilibration_ps: float = 100.0,
    seed: int = 1,
    constraints: Optional[str] = None,
    nonbonded_cutoff_nm: float = 1.0,
    rigid_water: bool = True,
    platform: str = "CPU",
    threads: Optional[int] = None,
    checkpoint_every: int = 1000,
    progress: bool = True,
    on_checkpoint: Optional[Callable[[int], None]] = None,
) -> Path:
    """Run all-atom Langevin dynamics of a PDB and save positions and forces for force matching.

    The structure is minimised, given Maxwell-Boltzmann velocities drawn with ``seed``,
    equilibrated for ``equilibration_ps`` and then simulated for ``n_frames`` save intervals
    with a ``LangevinMiddleIntegrator``; after each interval the positions, the instantaneous
    forces, the potential energy (and the box, if periodic) are recorded. The file format is
    described in the module docstring; :func:`load_reference` reads it.

    Without periodic box vectors in the PDB (no ``CRYST1``) the System has no cutoff
    (``NoCutoff``); with them it uses PME with ``nonbonded_cutoff_nm``. Positions are saved as
    the integrator has them, not wrapped into the box, so molecules stay whole.

    Parameters
    ----------
    pdb : path
        Input structure with hydrogens (PDB; ``.cif``/``.pdbx`` are read as PDBx/mmCIF).
    out : path
        Output ``.npz``, written atomically at the end. Work in progress lives in
        ``<out>.partial/``; calling again with the same settings resumes it.
    forcefield : str or sequence of str
        OpenMM force-field XML files, e.g. ``("amber14-all.xml", "amber14/tip3p.xml")``.
    n_frames : int
        Number of frames to save.
    save_interval_ps : float
        Time between frames (ps); must be a whole number of time steps.
    timestep_fs : float
        Integrator time step (fs).
    temperature_K : float
        Thermostat temperature (K).
    friction_per_ps : float
        Langevin friction coefficient (1/ps); 0 gives constant-energy dynamics.
    equilibration_ps : float
        Simulated time before the first frame (ps), after minimisation; a whole number of steps.
    seed : int
        Seed of the integrator's random numbers and of the initial velocities, 1 to 2**31-1
        (OpenMM treats 0 as "choose a random seed", which would not be reproducible).
    constraints : None or {"HBonds", "AllBonds", "HAngles"}
        Bond constraints. The saved forces never include constraint forces, so force matching
        needs the default ``None``; a warning is issued when the System has constraints.
    nonbonded_cutoff_nm : float
        Direct-space cutoff for PME (periodic systems only; at most half the box width).
    rigid_water : bool
        Keep water rigid (OpenMM's default). Use ``False`` with a flexible-capable water model
        (e.g. ``amber14/tip3p.xml``) to get water forces without constraint forces.
    platform : str
        OpenMM platform name. Runs are bit-for-bit reproducible on "Reference" and on "CPU"
        with one thread.
    threads : int, optional
        CPU platform threads; default 1. OpenMM's CPU platform is not bit-reproducible with
        more than one thread (trajectories from the same seed diverge from the first step,
        measured with openmm 8.5.1), so use more threads only for large systems when exact
        reproducibility does not matter. Not part of the recorded settings, so a run may be
        resumed with another thread count.
    checkpoint_every : int
        Frames per chunk: how many frames an interruption can lose at most. One chunk is held
        in memory (about ``checkpoint_every * atoms * 24`` bytes). Not part of the recorded
        settings.
    progress : bool
        Show progress bars (stderr).
    on_checkpoint : callable, optional
        Called as ``on_checkpoint(frames_done)`` after each chunk is safely on disk; an exception
        raised there stops the run, which a later call resumes.

    Returns
    -------
    pathlib.Path
        ``out``. If ``out`` already exists and was made with the same settings, it is returned
        without running anything.

    Raises
    ------
    FileNotFoundError
        The PDB or a force-field file does not exist.
    FileExistsError
        ``out`` exists but was made with other settings.
    ValueError
        Invalid settings, an unreadable PDB, a structure the force field cannot parametrise or
        whose initial energy is not finite, or a work directory recorded with other settings.
    SimulationBlowUp
        The energy, positions or forces became non-finite; the message names the MD step and
        the atoms with the largest forces.
    """
    recipe, threads, checkpoint_every = _checked_settings(
        forcefield=forcefield, n_frames=n_frames, save_interval_ps=save_interval_ps,
        timestep_fs=timestep_fs, temperature_K=temperature_K, friction_per_ps=friction_per_ps,
        equilibration_ps=equilibration_ps, seed=seed, constraints=constraints,
        nonbonded_cutoff_nm=nonbonded_cutoff_nm, rigid_water=rigid_water, platform=platform,
        threads=threads, checkpoint_every=checkpoint_every)
    structure = _read_structure(pdb)
    recipe = dataclasses.replace(recipe, pdb_sha256=structure.sha256)
    recorded = recipe.as_json_dict()
    out = Path(out)
    work_path = out.with_name(out.name + ".partial")
    if out.is_dir():
        raise ValueError(f"out must be a file path, but {out} is a directory")
    if out.exists() and _finished_output(out, recorded):
        shutil.rmtree(work_path, ignore_errors=True)  # left over if we stopped right after
        return out

    system = _create_system(structure, recipe)
    if system.getNumConstraints():
        warnings.warn(
            f"the System has {system.getNumConstraints()} constraints (constraints="
            f"{recipe.constraints!r}, rigid_water={recipe.rigid_water}); the saved forces do not "
            f"include constraint forces, so they are not the forces force matching needs",
            stacklevel=2)

    simulation = _Simulation(system, structure.topology, recipe, threads, work_path)
    prepared = not (work_path / "state.json").exists()
    if prepared:  # a fresh run: refuse a structure that cannot be simulated before writing
        simulation.prepare(structure.positions)
    with _WorkDir(work_path, recorded) as work:
        checkpoint = work.latest_checkpoint()
        if checkpoint is not None:
            simulation.resume(checkpoint)
        elif not prepared:
            simulation.prepare(structure.positions)
        if not work.equilibrated:
            simulation.equilibrate(recipe.equilibration_steps, progress)
            work.save_equilibrated(simulation.context.createCheckpoint())
        with progress_bar(recipe.n_frames, "reference frames", enabled=progress,
                          unit="frame") as bar:
            bar.update(work.frames_done)
            while work.frames_done < recipe.n_frames:
                count = min(checkpoint_every, recipe.n_frames - work.frames_done)
                frames = simulation.frames(count, bar)
                work.save_chunk(frames, simulation.context.createCheckpoint())
                if on_checkpoint is not None:
                    on_checkpoint(work.frames_done)
        generation = dict(
            recorded, format=FORMAT, pdb_name=structure.path.name,
            n_atoms=structure.topology.getNumAtoms(), periodic=simulation.periodic,
            nonbonded_method="PME" if simulation.periodic else "NoCutoff",
            n_constraints=system.getNumConstraints(), threads=threads,
            steps_per_frame=recipe.steps_per_frame,
        )
        _write_reference(out, work, _static_arrays(recipe, system, structure, generation))
    shutil.rmtree(work_path)
    return out


def _checked_settings(*, forcefield, n_frames, save_interval_ps, timestep_fs, temperature_K,
                      friction_per_ps, equilibration_ps, seed, constraints, nonbonded_cutoff_nm,
                      rigid_water, platform, threads, checkpoint_every) -> tuple:
    """``(recipe without the PDB hash, threads, checkpoint_every)``, every value checked."""
    recipe = _Recipe(
        pdb_sha256="",  # filled in once the file is read
        forcefield=_forcefield_names(forcefield),
        n_frames=check.count("n_frames", n_frames),
        save_interval_ps=check.number("save_interval_ps", save_interval_ps),
        timestep_fs=check.number("timestep_fs", timestep_fs),
        temperature_K=check.number("temperature_K", temperature_K),
        friction_per_ps=check.number("friction_per_ps", friction_per_ps, sign="non-negative"),
        equilibration_ps=check.number("equilibration_ps", equilibration_ps, sign="non-negative"),
        seed=check.count("seed", seed, maximum=2**31 - 1),
        constraints=_constraints_name(constraints),
        nonbonded_cutoff_nm=check.number("nonbonded_cutoff_nm", nonbonded_cutoff_nm),
        rigid_water=bool(rigid_water),
        platform=str(platform),
        openmm_version=openmm.__version__,
    )
    checkpoint_every = check.count("checkpoint_every", checkpoint_every)
    threads = 1 if threads is None and recipe.platform == "CPU" else threads
    if threads is not None:
        threads = check.count("threads", threads)
    _platform(recipe.platform, threads)  # unknown platform / misplaced threads: fail early
    return recipe, threads, checkpoint_every


def check_structure_file(pdb: Union[str, os.PathLike]) -> None:
    """Refuse a missing or unreadable structure file with the error :func:`generate_reference`
    would give, before any work."""
    _read_structure(pdb)


def check_reference_settings(*, n_frames: int, forcefield=("amber14-all.xml",),
                             save_interval_ps: float = 1.0, timestep_fs: float = 1.0,
                             temperature_K: float = 300.0, friction_per_ps: float = 1.0,
                             equilibration_ps: float = 100.0, seed: int = 1,
                             constraints: Optional[str] = None, nonbonded_cutoff_nm: float = 1.0,
                             rigid_water: bool = True, platform: str = "CPU",
                             threads: Optional[int] = None, checkpoint_every: int = 1000,
                             **ignored) -> None:
    """Check the settings of :func:`generate_reference` (same arguments, no structure) and
    raise its ValueError for the first bad one; callers that build a structure first
    (:func:`~openmm_geom.data.water.generate_water_reference`) refuse bad input before that
    work."""
    _checked_settings(forcefield=forcefield, n_frames=n_frames,
                      save_interval_ps=save_interval_ps, timestep_fs=timestep_fs,
                      temperature_K=temperature_K, friction_per_ps=friction_per_ps,
                      equilibration_ps=equilibration_ps, seed=seed, constraints=constraints,
                      nonbonded_cutoff_nm=nonbonded_cutoff_nm, rigid_water=rigid_water,
                      platform=platform, threads=threads, checkpoint_every=checkpoint_every)


_SCALARS = {"temperature_K": float, "save_interval_ps": float, "timestep_fs": float,
            "friction_per_ps": float, "equilibration_ps": float, "seed": int,
            "openmm_version": str, "topology_pdb": str}
_POSITIVE = ("temperature_K", "save_interval_ps", "timestep_fs")
_ALIASES = {"temperature": "temperature_K"}  # the shared ala2 files use "temperature"


def _first_bad_frame(array: np.ndarray) -> int:
    return int(np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))[0])


def _check_per_atom(name: str, array: np.ndarray, n_atoms: int, path: Path) -> None:
    if array.shape != (n_atoms,) or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{path}: {name} has shape {array.shape} and dtype {array.dtype}, "
                         f"expected numbers of shape ({n_atoms},) for {n_atoms} atoms")


def load_reference(path: Union[str, os.PathLike], require_forces: bool = True) -> dict:
    """Read and check a reference ``.npz`` (ours or the shared ``ala2_vacuum_300K_*.npz``).

    Parameters
    ----------
    path : path
        The file.
    require_forces : bool
        Whether a ``forces`` array is required (training needs it; evaluation does not).

    Returns
    -------
    dict
        Every array of the file. ``positions`` (frames, atoms, 3) nm and ``forces``
        (frames, atoms, 3) kJ/mol/nm as stored (float32); optional per-frame
        ``potential_energies`` (kJ/mol) and ``box_vectors`` (nm), per-atom ``masses`` (amu) and
        ``atomic_numbers``; scalars as Python ``float``/``int``/``str`` (``temperature_K``,
        ``save_interval_ps``, ``timestep_fs``, ``seed``, ``topology_pdb``, ...);
        ``forcefield`` as a list of str; ``units`` and ``generation`` as dicts. A
        ``temperature`` key (the shared files) is returned as ``temperature_K``.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not an npz file, truncated/corrupt, a required array missing, shapes that disagree,
        non-finite values, no frames, or units other than nm and kJ/mol/nm.
    """
    path = Path(path)
    raw = read_npz(path, "reference file")

    data = {_ALIASES.get(key, key): value for key, value in raw.items()}
    for key in ("positions", "forces") if require_forces else ("positions",):
        if key not in data:
            raise ValueError(f"{path} has no {key!r} array (it has: {sorted(raw)})")
    positions, forces = data["positions"], data.get("forces", data["positions"])
    if positions.ndim != 3 or positions.shape[2] != 3 or 0 in positions.shape:
        raise ValueError(f"{path}: positions must have shape (frames > 0, atoms > 0, 3), "
                         f"got {positions.shape}")
    if forces.shape != positions.shape:
        raise ValueError(f"{path}: forces have shape {forces.shape} but positions "
                         f"{positions.shape}; they must match")
    n_frames, n_atoms = positions.shape[:2]
    for key, shape in (("positions", None), ("forces", None),
                       ("potential_energies", (n_frames,)), ("box_vectors", (n_frames, 3, 3))):
        if key not in data:
            continue
        array = data[key]
        if shape is not None and array.shape != shape:
            raise ValueError(f"{path}: {key} has shape {array.shape}, expected {shape}")
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{path}: {key} must be floating point, got {array.dtype}")
        if not np.isfinite(array).all():
            raise ValueError(f"{path}: {key} has non-finite values "
                             f"(first in frame {_first_bad_frame(array)})")
    if "masses" in data:
        _check_per_atom("masses", data["masses"], n_atoms, path)
        if not (np.isfinite(data["masses"]).all() and (data["masses"] >= 0).all()):
            raise ValueError(f"{path}: masses must be finite and non-negative")
    if "atomic_numbers" in data:
        _check_per_atom("atomic_numbers", data["atomic_numbers"], n_atoms, path)

    for key, kind in _SCALARS.items():
        if key in data:
            if data[key].shape != ():
                raise ValueError(f"{path}: {key} must be a scalar, got shape {data[key].shape}")
            data[key] = kind(data[key].item())
    for key in _POSITIVE:
        if key in data and not data[key] > 0:
            raise ValueError(f"{path}: {key} must be positive, got {data[key]}")
    if "forcefield" in data:
        data["forcefield"] = [str(name) for name in np.atleast_1d(data["forcefield"])]
    for key in ("units", "generation"):
        if key in data:
            try:
                data[key] = json.loads(str(data[key].item()))
            except (ValueError, AttributeError) as error:
                raise ValueError(f"{path}: {key} is not valid JSON ({error})") from None
    units = data.get("units", {})
    for key in ("positions", "forces"):
        if key in units and units[key] != UNITS[key]:
            raise ValueError(f"{path}: {key} are in {units[key]!r}; openmm-geom expects "
                             f"{UNITS[key]!r}")
    return data


def reference_topology(data: Union[dict, str, os.PathLike]) -> app.Topology:
    """The OpenMM topology stored in a reference file (``topology_pdb``).

    Parameters
    ----------
    data : dict or path
        What :func:`load_reference` returned, or the path of a reference file.

    Returns
    -------
    openmm.app.Topology
        With residues, bonds and, for periodic runs, the box vectors of the input structure.

    Raises
    ------
    ValueError
        The data has no ``topology_pdb`` (the shared ala2 files do not store one), or its atom
        count differs from the positions'.
    """
    if not isinstance(data, dict):
        data = load_reference(data)
    text = data.get("topology_pdb")
    if text is None:
        raise ValueError("this reference data has no 'topology_pdb' (files made by "
                         "make_ala2_reference.py do not store one); read the topology from the "
                         "PDB file the run was made from")
    topology = app.PDBFile(io.StringIO(str(text))).topology
    n_atoms = data["positions"].shape[1]
    if topology.getNumAtoms() != n_atoms:
        raise ValueError(f"topology_pdb has {topology.getNumAtoms()} atoms but the positions "
                         f"have {n_atoms}")
    return topology

