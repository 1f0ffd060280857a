"""Coarse-grained priors as native OpenMM forces (the network runs in a TorchForce beside them)."""
from __future__ import annotations

from typing import Optional, Sequence

import openmm

__all__ = ["prior_forces"]


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
