"""Unit conversions at the OpenMM boundary.

OpenMM units (nm, kJ/mol, ps, amu, K) are used at every public interface of openmm-geom.
Models may work internally in other units; the export wrapper converts and records them.
Units are never guessed: a unit this module does not know is an error.
"""
from __future__ import annotations

import math

import openmm.unit as u

__all__ = [
    "AVOGADRO",
    "MOLAR_GAS_CONSTANT_KJ",
    "length_to_nm",
    "energy_to_kj_per_mol",
    "canonical_length_unit",
    "canonical_energy_unit",
    "kT_kj_per_mol",
    "value_in",
    "as_nm_array",
    "box_to_nm",
]

AVOGADRO = 6.02214076e23
#: Boltzmann constant times Avogadro, kJ/(mol K) (exact in SI 2019).
MOLAR_GAS_CONSTANT_KJ = 1.380649e-23 * AVOGADRO / 1000.0

# How many nm one model length unit is.
_LENGTH_TO_NM = {
    "nm": 1.0,
    "angstrom": 0.1,
    "pm": 1.0e-3,
    "bohr": 0.0529177210903,  # CODATA 2018
}
_LENGTH_ALIASES = {
    "nanometer": "nm", "nanometers": "nm", "nanometre": "nm",
    "a": "angstrom", "å": "angstrom", "ang": "angstrom", "angstroms": "angstrom",
    "picometer": "pm", "a0": "bohr", "bohrs": "bohr",
}
# How many kJ/mol one model energy unit is.
_ENERGY_TO_KJ_PER_MOL = {
    "kJ/mol": 1.0,
    "kcal/mol": 4.184,
    "eV": 1.602176634e-19 * AVOGADRO / 1000.0,  # 96.485332...
    "hartree": 4.3597447222071e-18 * AVOGADRO / 1000.0,  # 2625.4996...
    "meV": 1.602176634e-22 * AVOGADRO / 1000.0,
}
_ENERGY_ALIASES = {
    "kj/mol": "kJ/mol", "kilojoule/mole": "kJ/mol", "kilojoule_per_mole": "kJ/mol",
    "kilocalorie/mole": "kcal/mol", "kilocalorie_per_mole": "kcal/mol",
    "ev": "eV", "electronvolt": "eV", "mev": "meV", "ha": "hartree", "eh": "hartree",
    "hartrees": "hartree",
}


def _resolve(unit, kind: str) -> tuple[str, float]:
    """(canonical name, conversion factor to nm or kJ/mol) of a length or energy unit."""
    table, aliases = (
        (_LENGTH_TO_NM, _LENGTH_ALIASES) if kind == "length" else (_ENERGY_TO_KJ_PER_MOL, _ENERGY_ALIASES)
    )
    if isinstance(unit, u.Unit):
        factor = _openmm_unit_factor(unit, kind)
        known = [n for n, f in table.items() if math.isclose(f, factor, rel_tol=1e-9)]
        return (known[0] if known else f"openmm:{unit.get_symbol()}"), factor
    if not isinstance(unit, str):
        raise TypeError(f"{kind} unit must be a string or an openmm.unit.Unit, got {unit!r}")
    key = unit.strip()
    name = key if key in table else aliases.get(key.lower())
    if name is None:
        name = next((n for n in table if n.lower() == key.lower()), None)
    if name is None:
        raise ValueError(
            f"unknown {kind} unit {unit!r}; known: {sorted(table)} (or pass an openmm.unit.Unit)"
        )
    return name, table[name]


def _openmm_unit_factor(unit, kind: str) -> float:
    if kind == "length":
        if not unit.is_compatible(u.nanometer):
            raise ValueError(f"{unit} is not a length unit")
        return unit.conversion_factor_to(u.nanometer)
    if unit.is_compatible(u.kilojoule_per_mole):
        return unit.conversion_factor_to(u.kilojoule_per_mole)
    if unit.is_compatible(u.joule):  # a per-molecule energy: times Avogadro
        return unit.conversion_factor_to(u.joule) * AVOGADRO / 1000.0
    raise ValueError(f"{unit} is not an energy unit")


def canonical_length_unit(unit) -> str:
    """Canonical name of a length unit (``'nm'``, ``'angstrom'``, ``'pm'``, ``'bohr'``)."""
    return _resolve(unit, "length")[0]


def canonical_energy_unit(unit) -> str:
    """Canonical name of an energy unit (``'kJ/mol'``, ``'kcal/mol'``, ``'eV'``, ...)."""
    return _resolve(unit, "energy")[0]


def length_to_nm(unit) -> float:
    """Nanometres in one ``unit`` of length: ``x_nm = x_unit * length_to_nm(unit)``."""
    return _resolve(unit, "length")[1]


def energy_to_kj_per_mol(unit) -> float:
    """kJ/mol in one ``unit`` of energy: ``E_kj = E_unit * energy_to_kj_per_mol(unit)``."""
    return _resolve(unit, "energy")[1]


def kT_kj_per_mol(temperature_kelvin: float) -> float:
    """Thermal energy kT in kJ/mol."""
    if not (temperature_kelvin > 0 and math.isfinite(temperature_kelvin)):
        raise ValueError(f"temperature must be positive and finite, got {temperature_kelvin} K")
    return MOLAR_GAS_CONSTANT_KJ * temperature_kelvin


def value_in(value, unit) -> float:
    """A float from a plain number (taken to be in ``unit``) or an OpenMM Quantity."""
    if u.is_quantity(value):
        return float(value.value_in_unit(unit))
    return float(value)


def as_nm_array(value, name: str, tail: tuple = (3,)):
    """A float64 numpy array in nm from an array, nested lists, Vec3s or an OpenMM Quantity.

    Raises ValueError unless the shape is ``(N, *tail)`` and every value is finite.
    """
    import numpy as np

    if u.is_quantity(value):
        value = value.value_in_unit(u.nanometer)
    array = np.asarray([[float(c) for c in row] for row in value] if not hasattr(value, "shape")
                       else value, dtype=np.float64)
    if array.ndim != 1 + len(tail) or tuple(array.shape[1:]) != tuple(tail):
        raise ValueError(f"{name} must have shape (N, {', '.join(map(str, tail))}) in nm, "
                         f"got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def box_to_nm(box):
    """Box vectors (three Vec3 Quantities, a (3, 3) Quantity or array in nm) as a (3, 3) array."""
    import numpy as np

    if u.is_quantity(box):
        box = box.value_in_unit(u.nanometer)
    rows = [row.value_in_unit(u.nanometer) if u.is_quantity(row) else row for row in box]
    array = np.array([[float(c) for c in row] for row in rows], dtype=np.float64)
    if array.shape != (3, 3):
        raise ValueError(f"box vectors must be 3 x 3, got shape {array.shape}")
    return array
