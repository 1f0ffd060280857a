"""Flexible-water reference data: a cubic box of N water molecules, simulated without constraints.

:func:`water_box_pdb` writes a periodic PDB (with ``CRYST1``) of exactly ``n_molecules`` TIP3P
waters at a given density; :func:`generate_water_reference` runs
:func:`~openmm_geom.data.datagen.generate_reference` on it with flexible water, which is what
``openmm-geom datagen --water-box N`` does.

Why flexible: the saved forces are the System's forces, which never include constraint forces,
so a potential trained by force matching needs the System to have no constraints. OpenMM's
``amber14/tip3p.xml`` carries harmonic O-H bond and H-O-H angle parameters that
``rigidWater=False`` switches on. The O-H stretch (period about 9 fs) then limits the time step;
0.5 fs (the default here) keeps Langevin dynamics at 300 K stable and the integration error small.

How the box is built: OpenMM's ``Modeller.addSolvent`` tiles its pre-equilibrated TIP3P box into
a given box size, but the number of waters that fit is not controllable, and its ``numAdded``
option keeps the most central waters of a larger box (a droplet with vacuum in the corners). So
the box is filled at the smallest size at least as large as the target that holds N or more
waters, the surplus is removed (waters in close contacts first, then at random with ``seed``),
and the molecules' centres are scaled (the molecules themselves stay rigid) into the target box,
whose edge gives the requested density exactly. The scaling shrinks distances by at most a few
per cent, so the liquid structure of the pre-equilibrated box survives. addSolvent's tiles do
not match across the periodic boundary, which leaves some O-O contacts of about 0.18 nm; the
minimisation that :func:`~openmm_geom.data.datagen.generate_reference` runs first resolves them
(equilibrated 64-water boxes have no O-O distance below 0.24 nm).
"""
from __future__ import annotations

import io
import math
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

from .. import arguments as check
from ..io import atomic_write_bytes

__all__ = [
    "WATER_DENSITY",
    "WATER_FORCEFIELD",
    "default_cutoff_nm",
    "generate_water_reference",
    "salt_molarity",
    "water_box_edge_nm",
    "water_box_pdb",
]

WATER_DENSITY = 0.997
"""g/cm^3, liquid water at 298 K and 1 bar (the box is run at constant volume)."""
WATER_FORCEFIELD = ("amber14/tip3p.xml",)
"""OpenMM's TIP3P, which has flexible O-H and H-O-H parameters for ``rigidWater=False``."""

_WATER_MOLAR_MASS = 15.9994 + 2 * 1.00794  # g/mol, with the element masses OpenMM uses
_AVOGADRO = 6.02214076e23  # 1/mol
_NM3_PER_CM3 = 1e21
_GROW = 1.005  # relative step of the trial box edge while looking for enough waters
_MAX_CUTOFF_NM = 1.0
_CLOSE_OO_NM = 0.25  # O-O distances below this are rare in liquid water (first peak 0.28 nm)


def water_box_edge_nm(n_molecules: int, density: float = WATER_DENSITY) -> float:
    """Edge (nm) of the cubic box that holds ``n_molecules`` waters at ``density`` (g/cm^3)."""
    n = check.count("n_molecules", n_molecules)
    rho = check.number("density", density)
    volume_nm3 = n * _WATER_MOLAR_MASS / (rho * _AVOGADRO) * _NM3_PER_CM3
    return volume_nm3 ** (1.0 / 3.0)


def default_cutoff_nm(edge_nm: float) -> float:
    """The PME direct-space cutoff used for a water box: 1 nm, or less in boxes under 2 nm.

    PME needs the cutoff to be at most half the box edge; it is rounded down to 0.01 nm.
    """
    return min(_MAX_CUTOFF_NM, math.floor(edge_nm / 2 * 100 + 1e-9) / 100)


def _fill(forcefield: app.ForceField, edge_nm: float) -> app.Modeller:
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(forcefield, model="tip3p", boxSize=openmm.Vec3(edge_nm, edge_nm, edge_nm)
                        * unit.nanometer, neutralize=False)
    return modeller


def _choose_waters(oxygens: np.ndarray, edge: float, n: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Indices (sorted) of ``n`` of the waters, dropping those in close contacts first.

    addSolvent's tiles do not match across the periodic boundary, which leaves O-O contacts
    down to 0.18 nm there; spending the surplus waters on those contacts spares the minimiser
    some of them (the rest it resolves).
    """
    from scipy.sparse import coo_matrix
    from scipy.spatial import cKDTree

    count = len(oxygens)
    tree = cKDTree(np.mod(oxygens, edge), boxsize=edge)
    pairs = tree.query_pairs(_CLOSE_OO_NM, output_type="ndarray")
    ones = np.ones(len(pairs), np.int64)
    close = coo_matrix((np.concatenate([ones, ones]), (np.concatenate([pairs[:, 0], pairs[:, 1]]),
                        np.concatenate([pairs[:, 1], pairs[:, 0]]))), shape=(count, count)).tocsr()
    alive = np.ones(count, bool)
    order = rng.permutation(count)  # breaks ties reproducibly
    while alive.sum() > n:
        contacts = (close @ alive.astype(np.int64)) * alive
        if not contacts.any():
            break
        alive[order[np.argmax(contacts[order])]] = False
    surplus = int(alive.sum()) - n
    if surplus:
        alive[rng.choice(np.flatnonzero(alive), size=surplus, replace=False)] = False
    return np.flatnonzero(alive)


def _ion_sites(centres: np.ndarray, edge: float, count: int,
               rng: np.random.Generator) -> list:
    """Indices of ``count`` of the molecule ``centres`` (nm, cubic box ``edge``) to turn into
    ions, each drawn at random among the sites farthest (periodic distance, within 0.05 nm of
    the farthest) from those already chosen, so that ions start apart."""
    chosen: list = []
    if count == 0:
        return chosen
    chosen.append(int(rng.integers(len(centres))))
    nearest = np.full(len(centres), np.inf)
    while len(chosen) < count:
        delta = centres - centres[chosen[-1]]
        delta -= edge * np.round(delta / edge)
        nearest = np.minimum(nearest, np.linalg.norm(delta, axis=1))
        far = np.flatnonzero(nearest >= nearest.max() - 0.05)
        chosen.append(int(rng.choice(far)))
    return chosen


def salt_molarity(ion_pairs: int, n_molecules: int, density: float = WATER_DENSITY) -> float:
    """mol/L of salt in the box of :func:`water_box_pdb` (``ion_pairs`` in ``n_molecules``
    sites)."""
    volume_l = water_box_edge_nm(n_molecules, density) ** 3 * 1e-24
    return ion_pairs / (_AVOGADRO * volume_l)


def water_box_pdb(
    n_molecules: int,
    out_path: Union[str, os.PathLike],
    *,
    seed: int = 1,
    density: float = WATER_DENSITY,
    ion_pairs: int = 0,
) -> Path:
    """Write a cubic periodic box of exactly ``n_molecules`` TIP3P waters as a PDB.

    Parameters
    ----------
    n_molecules : int
        Number of water molecules (``3 * n_molecules`` atoms, residues ``HOH`` with atoms
        ``O``, ``H1``, ``H2``).
    out_path : path
        The PDB to write (atomically). It has a ``CRYST1`` record with the box, and the same
        arguments give the same bytes (OpenMM's dated ``REMARK`` is left out), so a
        :func:`~openmm_geom.data.datagen.generate_reference` run on it can be resumed.
    seed : int
        Chooses which surplus waters of OpenMM's pre-equilibrated box are removed.
    density : float
        Mass density in g/cm^3; sets the box edge, see :func:`water_box_edge_nm`.
    ion_pairs : int
        Replace ``2 * ion_pairs`` of the waters by ``ion_pairs`` Na+ and ``ion_pairs`` Cl-
        (residues ``NA`` and ``CL`` of ``amber14/tip3p.xml``, placed at the replaced waters'
        oxygens, which are chosen at random among those farthest from the ions placed so far).
        The box keeps the edge of ``n_molecules`` waters, so the salt concentration is
        ``ion_pairs / (N_A * edge^3)`` (:func:`salt_molarity`); 2 pairs in 64 sites is
        1.7 mol/L.

    Returns
    -------
    pathlib.Path
        ``out_path``.

    Notes
    -----
    PME needs a box edge of at least twice the nonbonded cutoff: 16 waters at 0.997 g/cm^3 make
    a 0.78 nm box (cutoff at most 0.39 nm), 64 waters 1.24 nm, 216 waters 1.87 nm.
    """
    n = check.count("n_molecules", n_molecules)
    seed = check.count("seed", seed, minimum=0)
    ion_pairs = check.count("ion_pairs", ion_pairs, minimum=0)
    if 2 * ion_pairs >= n:
        raise ValueError(f"ion_pairs ({ion_pairs}) must leave some of the {n} waters: "
                         f"at most {(n - 1) // 2}")
    edge = water_box_edge_nm(n, density)
    forcefield = app.ForceField(*WATER_FORCEFIELD)

    fill_edge = edge
    for _ in range(200):  # 1.005**200 = 2.7: far more than a dense-enough box ever needs
        modeller = _fill(forcefield, fill_edge)
        if modeller.topology.getNumResidues() >= n:
            break
        fill_edge *= _GROW
    else:  # pragma: no cover - OpenMM's water box is liquid water, so this cannot happen
        raise RuntimeError(f"could not fit {n} waters into a box of up to {fill_edge:.3f} nm")

    residues = list(modeller.topology.residues())
    positions = np.asarray(modeller.positions.value_in_unit(unit.nanometer))
    # addSolvent centres an empty box on the origin; shift it to [0, edge) and scale the
    # molecules' oxygens (not their internal geometry) into the target box
    scale = edge / fill_edge
    oxygens = [next(a.index for a in r.atoms() if a.element == app.element.oxygen)
               for r in residues]
    rng = np.random.default_rng(seed)
    centres = (positions[oxygens] + fill_edge / 2) * scale
    keep = _choose_waters(centres, edge, n, rng)
    sites = _ion_sites(centres[keep], edge, 2 * ion_pairs, rng)
    waters = [index for k, index in enumerate(keep) if k not in set(sites)]

    topology = app.Topology()
    chain = topology.addChain()
    new_positions = []
    for number, index in enumerate(waters, start=1):
        oxygen = positions[oxygens[index]]
        residue = topology.addResidue("HOH", chain, id=str(number))
        added = {}
        for atom in residues[index].atoms():
            added[atom.name] = topology.addAtom(atom.name, atom.element, residue)
            new_positions.append(centres[index] + positions[atom.index] - oxygen)
        for hydrogen in ("H1", "H2"):
            topology.addBond(added["O"], added[hydrogen])
    for k, site in enumerate(sites):  # Na+ first, then Cl-
        name, element = ("NA", app.element.sodium) if k < ion_pairs else ("CL", app.element.chlorine)
        residue = topology.addResidue(name, chain, id=str(len(waters) + k + 1))
        topology.addAtom(name, element, residue)
        new_positions.append(centres[keep[site]])
    topology.setPeriodicBoxVectors(np.eye(3) * edge * unit.nanometer)

    text = io.StringIO()
    app.PDBFile.writeFile(topology, np.asarray(new_positions) * unit.nanometer, text)
    pdb = "".join(line for line in text.getvalue().splitlines(keepends=True)
                  if not line.startswith("REMARK   1 CREATED WITH OPENMM"))
    out_path = Path(out_path)
    atomic_write_bytes(out_path, pdb.encode())
    return out_path


def generate_water_reference(
    n_molecules: int,
    out: Union[str, os.PathLike],
    *,
    density: float = WATER_DENSITY,
    forcefield: Union[str, Sequence[str]] = WATER_FORCEFIELD,
    timestep_fs: float = 0.5,
    save_interval_ps: float = 0.1,
    equilibration_ps: float = 20.0,
    nonbonded_cutoff_nm: Optional[float] = None,
    rigid_water: bool = False,
    seed: int = 1,
    ion_pairs: int = 0,
    **options,
) -> Path:
    """Build a water box (:func:`water_box_pdb`) and generate flexible-water reference data.

    Parameters
    ----------
    n_molecules : int
        Number of water molecules.
    out : path
        Output ``.npz`` in the format of :mod:`openmm_geom.data.datagen` (positions, forces,
        potential_energies, box_vectors, ...). Resumable like
        :func:`~openmm_geom.data.datagen.generate_reference`.
    density : float
        g/cm^3; the run is at constant volume.
    forcefield : str or sequence of str
        OpenMM force-field XML files for water.
    timestep_fs : float
        0.5 fs by default: the unconstrained O-H stretch needs a small step.
    save_interval_ps : float
        ps between frames; 0.1 ps by default (200 steps).
    equilibration_ps : float
        ps of Langevin dynamics after minimisation before the first frame.
    nonbonded_cutoff_nm : float, optional
        PME direct-space cutoff; default :func:`default_cutoff_nm` of the box edge.
    rigid_water : bool
        False (default) for force matching; True gives constrained water whose saved forces
        lack the constraint forces (datagen warns).
    seed : int
        Seed of the box construction, the velocities and the integrator.
    ion_pairs : int
        Na+/Cl- pairs that replace waters (see :func:`water_box_pdb`): salt water with the
        ion parameters of ``amber14/tip3p.xml`` (Joung-Cheatham).
    **options
        Passed on to :func:`~openmm_geom.data.datagen.generate_reference` (``n_frames``,
        ``temperature_K``, ``friction_per_ps``, ``threads``, ``progress``, ...).

    Returns
    -------
    pathlib.Path
        ``out``.
    """
    from .datagen import check_reference_settings, generate_reference

    if nonbonded_cutoff_nm is None:
        nonbonded_cutoff_nm = default_cutoff_nm(water_box_edge_nm(n_molecules, density))
    # refuse bad settings before the box is built (which takes a while for large boxes)
    check_reference_settings(forcefield=forcefield, timestep_fs=timestep_fs,
                             save_interval_ps=save_interval_ps,
                             equilibration_ps=equilibration_ps,
                             nonbonded_cutoff_nm=nonbonded_cutoff_nm, rigid_water=rigid_water,
                             seed=seed, **options)
    # the PDB only lives for the run: the output stores it as topology_pdb, and a resumed run
    # rebuilds the identical bytes (the run's settings include the PDB's sha256)
    with tempfile.TemporaryDirectory(prefix="openmm-geom-water-") as tmp:
        pdb = water_box_pdb(n_molecules, Path(tmp) / f"water{n_molecules}.pdb", seed=seed,
                            density=density, ion_pairs=ion_pairs)
        return generate_reference(
            pdb, out, forcefield=forcefield, timestep_fs=timestep_fs,
            save_interval_ps=save_interval_ps, equilibration_ps=equilibration_ps,
            nonbonded_cutoff_nm=nonbonded_cutoff_nm, rigid_water=rigid_water, seed=seed,
            **options)
