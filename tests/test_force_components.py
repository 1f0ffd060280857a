"""benchmarks/force_components.py: the per-molecule split of forces is exact and lands right."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from force_components import split_mean_square  # noqa: E402


def test_net_force_torque_and_internal_parts_are_orthogonal_and_complete():
    rng = np.random.default_rng(0)
    water = np.array([[0.0, 0.0, 0.0], [0.0957, 0.0, 0.0], [-0.024, 0.0927, 0.0]])
    positions = np.stack([water + rng.uniform(0, 1, 3) for _ in range(4)]).reshape(1, 12, 3)
    waters = np.arange(12).reshape(4, 3)
    none = np.zeros(0, dtype=int)
    forces = rng.normal(size=(1, 12, 3))
    parts = split_mean_square(forces, positions, waters, none)
    assert np.isclose(parts["net_force"] + parts["torque"] + parts["internal"], parts["total"])
    push = np.tile([1.0, 2.0, -1.0], (1, 12, 1))  # the same force on every atom: net force only
    assert np.isclose(split_mean_square(push, positions, waters, none)["net_force"],
                      (push ** 2).mean())
    centre = positions[0].reshape(4, 3, 3).mean(axis=1, keepdims=True)
    spin = np.cross([0.0, 0.0, 1.0], positions[0].reshape(4, 3, 3) - centre).reshape(1, 12, 3)
    assert np.isclose(split_mean_square(spin, positions, waters, none)["torque"], (spin ** 2).mean())
    stretch = np.zeros((1, 12, 3))  # equal and opposite along the O-H1 bond: internal only
    bond = water[1] - water[0]
    stretch[0, 0], stretch[0, 1] = -bond, bond
    parts = split_mean_square(stretch, positions, waters, none)
    assert np.isclose(parts["internal"], (stretch ** 2).mean())
    assert np.isclose(parts["net_force"] + parts["torque"], 0.0, atol=1e-12)
