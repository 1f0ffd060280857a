"""Where a potential's force error lies: per water molecule, in its net force, its torque or
its internal (stretch and bend) motion, beside the same split of the reference forces.

For each water molecule of each test frame (the last ``test_fraction`` of the frames, as
``potential train`` splits them), the 9 force components on O, H1, H2 are projected on three
orthogonal 3-dimensional subspaces: rigid translation (the net force), rigid rotation about
the molecule's centre (the torque) and the rest (the internal O-H stretches and H-O-H bend).
The squared norms, summed over molecules and frames, give each subspace's share of the
residual ``F_model - F_ref`` (its mean square) and of the reference forces. A model whose error
sits in the internal share struggles with the intramolecular (bonded, three-body) forces; one
whose error sits in the net-force and torque shares struggles with the intermolecular ones.

The reference forces are also recomputed with their force field, each term in its own force
group (bond, angle, nonbonded; checked to sum to the stored forces), and split the same way.
Ions (single atoms) are reported apart: their whole force is a net force.

    .venv/bin/python benchmarks/force_components.py --data water64.npz \
        --models att/model.pt et/model.pt [--out components.json]
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

PARTS = {"bond": "HarmonicBondForce", "angle": "HarmonicAngleForce",
         "nonbonded": "NonbondedForce"}


def reference_parts(data_path: Path, frames: np.ndarray) -> dict:
    """Forces (F, N, 3) kJ/mol/nm of each part on ``frames`` of the data file."""
    import openmm
    import openmm.app as app
    import openmm.unit as unit

    raw = np.load(data_path, allow_pickle=False)
    generation = json.loads(str(raw["generation"]))
    pdb = app.PDBFile(io.StringIO(str(raw["topology_pdb"])))
    forcefield = app.ForceField(*[str(f) for f in raw["forcefield"]])
    system = forcefield.createSystem(
        pdb.topology, nonbondedMethod=app.PME, rigidWater=False, constraints=None,
        nonbondedCutoff=generation["nonbonded_cutoff_nm"] * unit.nanometer)
    groups = {}
    for force in system.getForces():
        name = type(force).__name__
        part = next((p for p, n in PARTS.items() if n == name), None)
        force.setForceGroup({"bond": 1, "angle": 2, "nonbonded": 3}.get(part, 4))
        if part:
            groups[part] = force.getForceGroup()
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    parts = {p: [] for p in groups}
    total = []
    for k in frames:
        context.setPeriodicBoxVectors(*[openmm.Vec3(*map(float, v)) for v in raw["box_vectors"][k]])
        context.setPositions(raw["positions"][k].astype(np.float64))
        for p, g in groups.items():
            state = context.getState(getForces=True, groups={g})
            parts[p].append(state.getForces(asNumpy=True).value_in_unit(
                unit.kilojoule_per_mole / unit.nanometer))
        total.append(context.getState(getForces=True).getForces(asNumpy=True).value_in_unit(
            unit.kilojoule_per_mole / unit.nanometer))
    return {p: np.asarray(v) for p, v in parts.items()} | {"total": np.asarray(total)}


def molecule_bases(positions: np.ndarray) -> np.ndarray:
    """(M, 3, 9, 3) orthonormal bases (translation, rotation, internal) of each water's 9-D
    force space; ``positions`` (M, 3, 3) nm of O, H1, H2."""
    count = len(positions)
    centre = positions.mean(axis=1, keepdims=True)
    translation = np.zeros((count, 9, 3))
    rotation = np.zeros((count, 9, 3))
    for axis in range(3):
        unit = np.zeros(3)
        unit[axis] = 1.0
        translation[:, :, axis] = np.tile(unit, 3) / np.sqrt(3.0)
        rotation[:, :, axis] = np.cross(unit, positions - centre).reshape(count, 9)
    bases = []
    for m in range(count):
        q, _ = np.linalg.qr(np.concatenate([translation[m], rotation[m],
                                            np.eye(9)], axis=1))  # Gram-Schmidt in this order
        bases.append(np.stack([q[:, 0:3], q[:, 3:6], q[:, 6:9]]))
    return np.asarray(bases)


def split_mean_square(forces: np.ndarray, positions: np.ndarray, waters: np.ndarray,
                      ions: np.ndarray) -> dict:
    """Mean square (per atom and component, kJ^2/mol^2/nm^2) of ``forces`` (F, N, 3) in each
    subspace, over all frames; ``waters`` (M, 3) atom indices (O, H1, H2), ``ions`` (K,)."""
    totals = np.zeros(3)
    for frame in range(len(forces)):
        bases = molecule_bases(positions[frame][waters])  # (M, 3, 9, 3)
        f = forces[frame][waters].reshape(len(waters), 9)
        totals += (np.einsum("mi,msik->msk", f, bases) ** 2).sum(axis=(0, 2))
    denominator = forces.shape[0] * forces.shape[1] * 3
    result = dict(zip(("net_force", "torque", "internal"), totals / denominator))
    result["ions"] = float((forces[:, ions] ** 2).sum() / denominator) if len(ions) else 0.0
    result["total"] = float((forces ** 2).mean())
    return {k: float(v) for k, v in result.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--models", nargs="+", required=True, help="model.pt files")
    parser.add_argument("--out", default=None, help="JSON file (default: print only)")
    args = parser.parse_args(argv)

    from openmm_geom.data.potential_data import load_potential_data, time_block_split
    from openmm_geom.training.checkpoints import load_potential
    from openmm_geom.training.energy_force import evaluate_potential
    from openmm_geom.workflows.config import PotentialSettings

    settings = PotentialSettings()
    data = load_potential_data(args.data)
    _, _, test = time_block_split(len(data.energies), validation_fraction=settings.validation_fraction,
                                  test_fraction=settings.test_fraction, gap=settings.gap_frames)
    numbers = np.asarray(data.atomic_numbers)
    oxygens = np.flatnonzero(numbers == 8)
    waters = np.stack([oxygens, oxygens + 1, oxygens + 2], axis=1)
    assert (numbers[waters[:, 1:]] == 1).all(), "waters must be stored as O, H, H"
    ions = np.flatnonzero((numbers != 1) & (numbers != 8))
    positions = data.positions[test].astype(np.float64)
    stored = data.forces[test].astype(np.float64)
    parts = reference_parts(Path(args.data), test)
    mismatch = float(np.abs(parts.pop("total") - stored).max())
    result = {"data": args.data, "test_frames": len(test),
              "parts_sum_minus_stored_max_abs": mismatch,
              "reference": split_mean_square(stored, positions, waters, ions),
              "reference_parts": {p: split_mean_square(v, positions, waters, ions)
                                  for p, v in parts.items()},
              "models": {}}
    for path in args.models:
        model, _ = load_potential(path)
        dtype = next(model.parameters()).dtype
        predicted = np.asarray(evaluate_potential(model, data.positions[test].astype(
            "float32" if str(dtype) == "torch.float32" else "float64"), data.energies[test],
            stored, data.boxes[test])["predicted_forces"], dtype=np.float64)
        residual = predicted - stored
        result["models"][path] = {
            "force_mae": float(np.abs(residual).mean()),
            "force_mae_by_element": {int(z): float(np.abs(residual[:, numbers == z]).mean())
                                     for z in sorted(set(numbers.tolist()))},
            "residual": split_mean_square(residual, positions, waters, ions)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
