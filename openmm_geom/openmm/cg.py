"""Coarse-grained models in OpenMM: priors as native forces + the network in a TorchForce."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import openmm

from .forces import load_exported, torch_force

__all__ = ["prior_forces", "cg_system"]


def prior_forces(config: dict, particles: Optional[Sequence[int]] = None) -> list:
    """Native OpenMM forces equal to :class:`~openmm_geom.models.priors.CGPriors` energies.

    ``config`` is ``CGPriors.to_config()`` (as stored in exported model files);
    ``particles`` maps bead index -> System particle (default identity). Conventions:
    HarmonicBondForce/HarmonicAngleForce use ``1/2 k (x - x0)^2``, the dihedral Fourier series
    is a CustomTorsionForce, the repulsion ``(sigma/r)^c`` a CustomBondForce.
    """
    n = int(config["n_beads"])
    p = list(range(n)) if particles is None else [int(i) for i in particles]
    if len(p) != n:
        raise ValueError(f"{len(p)} particles for {n} beads")
    forces = []
    if config["bonds"]:
        bonds = openmm.HarmonicBondForce()
        for (i, j), k, r0 in zip(config["bonds"], config["bond_k"], config["bond_r0"]):
            bonds.addBond(p[i], p[j], r0, k)
        forces.append(bonds)
    if config["angles"]:
        angles = openmm.HarmonicAngleForce()
        for (i, j, k), kk, t0 in zip(config["angles"], config["angle_k"], config["angle_theta0"]):
            angles.addAngle(p[i], p[j], p[k], t0, kk)
        forces.append(angles)
    harmonics = len(config["dihedral_cos"][0]) if config["dihedral_cos"] else 0
    if config["dihedrals"] and harmonics:
        energy = " + ".join(f"a{h}*cos({h}*theta) + b{h}*sin({h}*theta)"
                            for h in range(1, harmonics + 1))
        torsions = openmm.CustomTorsionForce(energy)
        for h in range(1, harmonics + 1):
            torsions.addPerTorsionParameter(f"a{h}")
            torsions.addPerTorsionParameter(f"b{h}")
        for quad, a, b in zip(config["dihedrals"], config["dihedral_cos"], config["dihedral_sin"]):
            torsions.addTorsion(*[p[i] for i in quad], [v for pair in zip(a, b) for v in pair])
        forces.append(torsions)
    if config["repulsions"]:
        repulsion = openmm.CustomBondForce(f"(sigma/r)^{float(config['repulsion_exponent'])!r}")
        repulsion.addPerBondParameter("sigma")
        for (i, j), sigma in zip(config["repulsions"], config["repulsion_sigma"]):
            repulsion.addBond(p[i], p[j], [sigma])
        forces.append(repulsion)
    for force in forces:
        force.setName(f"CGPrior{type(force).__name__}")
    return forces


def cg_system(model: os.PathLike, *, masses: Optional[Sequence[float]] = None) -> openmm.System:
    """An OpenMM System for an exported CG model (from :func:`export_cg_model`).

    One particle per bead (times the exported replica count), masses from the file unless
    given, the priors as native forces (when exported with ``native_priors=True``; replicated
    per copy), and the network as one TorchForce (force group 1, priors in group 0).
    """
    module, metadata = load_exported(model)
    cg = metadata.extra.get("cg")
    if cg is None:
        raise ValueError(f"{model} is not a coarse-grained model export (no 'cg' metadata)")
    masses = metadata.masses_amu if masses is None else list(masses)
    if masses is None or len(masses) != metadata.n_atoms:
        raise ValueError(f"need {metadata.n_atoms} masses")
    system = openmm.System()
    for mass in masses:
        system.addParticle(float(mass))
    if cg["priors"]:
        n = cg["n_beads"]
        for replica in range(cg["replicas"]):
            for force in prior_forces(cg["priors"], range(replica * n, (replica + 1) * n)):
                system.addForce(force)
    system.addForce(torch_force(module, system=system, force_group=1))
    return system
