"""Unit conversions at the OpenMM boundary.

OpenMM units (nm, kJ/mol, ps, amu, K, rad) are used at every public interface of openmm-geom.
Models may work internally in other units; the export wrapper converts and records them.
Units are never guessed: a unit this module does not know is an error.

:func:`to_openmm_units` is the one door through which a physical argument enters the Python
API: an ``openmm.unit.Quantity`` in any compatible unit, or a plain number meaning OpenMM's
unit, becomes a float (or float64 array) in OpenMM's unit, with one error message naming the
argument and the dimension it should have.
"""
from __future__ import annotations

import math

import openmm.unit as u

__all__ = [
    "AVOGADRO",
    "CV_UNITS",
    "to_openmm_units",
    "has_units",
    "MOLAR_GAS_CONSTANT_KJ",
    "length_to_nm",
    "energy_to_kj_per_mol",
    "canonical_length_unit",
    "canonical_energy_unit",
    "kT_kj_per_mol",
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


def kT_kj_per_mol(temperature) -> float:
    """Thermal energy kT in kJ/mol of a temperature (K, or a Quantity)."""
    return MOLAR_GAS_CONSTANT_KJ * to_openmm_units(temperature, "temperature", u.kelvin,
                                                   positive=True)


def as_nm_array(value, name: str, tail: tuple = (3,)):
    """A float64 numpy array in nm from an array, nested lists, Vec3s or OpenMM Quantities
    (a Quantity array, or a list of Vec3 Quantities in any length unit).

    Raises ValueError unless the shape is ``(N, *tail)`` and every value is finite; TypeError
    for a Quantity that is not a length.
    """
    import numpy as np

    if has_units(value):
        array = to_openmm_units(value, name, u.nanometer, finite=False)
    else:
        array = np.asarray([[float(c) for c in row] for row in value]
                           if not hasattr(value, "shape") else value, dtype=np.float64)
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 1 + len(tail) or tuple(array.shape[1:]) != tuple(tail):
        raise ValueError(f"{name} must have shape (N, {', '.join(map(str, tail))}) in nm, "
                         f"got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def box_to_nm(box):
    """Box vectors (three Vec3 Quantities, a (3, 3) Quantity or array in nm) as a (3, 3) array."""
    import numpy as np

    array = np.asarray(to_openmm_units(box, "box vectors", u.nanometer, finite=False)
                       if has_units(box) else [[float(c) for c in row] for row in box],
                       dtype=np.float64)
    if array.shape != (3, 3):
        raise ValueError(f"box vectors must be 3 x 3, got shape {array.shape}")
    return array


# -- one door for physical arguments ----------------------------------------------------------
#: What a CV value may be: a length (nm), an angle (rad) or a plain number.
CV_UNITS = (u.nanometer, u.radian, u.dimensionless)

# (OpenMM unit, what it measures, how it is written in messages)
_KNOWN = [
    (u.kelvin, "a temperature", "K"),
    (u.picosecond, "a time", "ps"),
    (u.nanometer, "a length", "nm"),
    (u.radian, "an angle", "rad"),
    (u.kilojoule_per_mole, "an energy", "kJ/mol"),
    (u.dalton, "a mass", "amu"),
    (u.kilojoule_per_mole / u.nanometer ** 2, "a force constant", "kJ/mol/nm^2"),
    (u.kilojoule_per_mole / u.radian ** 2, "a force constant", "kJ/mol/rad^2"),
    (u.kilojoule_per_mole / u.nanometer, "a force", "kJ/mol/nm"),
    (u.picosecond ** -1, "a rate", "1/ps"),
    (u.nanometer / u.picosecond, "a velocity", "nm/ps"),
    (u.dimensionless, "a plain number", ""),
]


def _dimensions(unit) -> dict:
    return {dim.name: power for dim, power in unit.iter_base_dimensions()}


def _known(unit) -> tuple:
    """(what it measures, symbol) of an OpenMM unit."""
    for known, what, symbol in _KNOWN:
        if unit.is_compatible(known) and math.isclose(unit.conversion_factor_to(known), 1.0):
            return what, symbol
    return f"a quantity in {unit.get_symbol()}", unit.get_symbol()


def has_units(value) -> bool:
    """Whether ``value`` is a Quantity or a (nested) list/tuple holding one."""
    if u.is_quantity(value):
        return True
    if isinstance(value, (list, tuple)):
        return any(has_units(item) for item in value)
    return False


def _per_particle(quantity, target):
    """A per-particle value (kJ, kcal/A^2, g...) of a molar target (kJ/mol, amu...), or None."""
    if _dimensions(target).get("amount", 0) >= 0:
        return None
    per_particle = target * u.mole
    if not quantity.unit.is_compatible(per_particle):
        return None
    return _scaled(quantity.value_in_unit(per_particle), AVOGADRO)


def _scaled(magnitude, factor: float):
    import numpy as np

    return np.asarray(magnitude, dtype=np.float64) * factor if factor != 1.0 else magnitude


def _in_md_units(quantity):
    """Any Quantity in OpenMM's MD unit system; per-particle energies become molar."""
    magnitude = quantity.value_in_unit_system(u.md_unit_system)
    dims = _dimensions(quantity.unit)
    mass = dims.get("mass", 0)
    if mass and not dims.get("amount", 0):  # an energy (or mass) per particle: times N_A
        magnitude = _scaled(magnitude, AVOGADRO ** mass)
    return magnitude


def _magnitude(value, targets):
    """The number(s) of ``value`` in the first compatible target unit; (magnitude, unit or
    None); raises LookupError when no target fits."""
    if u.is_quantity(value):
        if targets is None:
            return _in_md_units(value), None
        for target in targets:
            if value.unit.is_compatible(target):
                return value.value_in_unit(target), target
        for target in targets:
            converted = _per_particle(value, target)
            if converted is not None:
                return converted, target
        raise LookupError(value)
    if isinstance(value, (list, tuple)) and has_units(value):
        parts = [_magnitude(item, targets) for item in value]
        units = {id(unit): unit for _, unit in parts if unit is not None}
        if len(units) > 1:
            raise LookupError(value)
        return [part for part, _ in parts], next(iter(units.values()), None)
    return value, None


def _describe(targets) -> str:
    if targets is None:
        return "a quantity in OpenMM's units"
    groups: dict = {}
    for target in targets:
        what, symbol = _known(target)
        groups.setdefault(what, []).append(symbol)
    names = [f"{what} ({' or '.join(symbols)})" if any(symbols) else what
             for what, symbols in groups.items()]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _brief(value) -> str:
    """A Quantity (or list of them) for an error message: the value if scalar, else its unit."""
    if u.is_quantity(value):
        import numpy as np

        if np.ndim(value.value_in_unit(value.unit)) == 0:
            return str(value)
        return f"values in {value.unit.get_symbol()}"
    symbols = sorted({item.unit.get_symbol() for item in _flat_quantities(value)})
    return f"values in {', '.join(symbols)}"


def _flat_quantities(value):
    if u.is_quantity(value):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _flat_quantities(item)


def to_openmm_units(value, name: str, unit, *, positive: bool = False,
                    nonnegative: bool = False, finite: bool = True):
    """A physical argument as a float (or float64 array) in OpenMM's unit.

    Parameters
    ----------
    value : number, array-like, openmm.unit.Quantity, or a list of Quantities (e.g. Vec3s)
        A Quantity in any unit compatible with ``unit`` (a per-particle energy or mass, such as
        ``kcal`` or ``gram``, is made molar by Avogadro's number); a plain number or array is
        taken to be in ``unit`` already.
    name : str
        The argument's name, used in every error message.
    unit : openmm.unit.Unit, tuple of Units, or None
        The argument's OpenMM unit (``kelvin``, ``picosecond``, ``kilojoule_per_mole`` ...).
        A tuple lists alternatives (a Quantity converts to the first compatible one, e.g.
        :data:`CV_UNITS`); None accepts any Quantity and converts it to OpenMM's MD unit
        system (nm, ps, kJ/mol, rad, K, amu, e), as a global parameter's value.
    positive, nonnegative : bool
        Require every value to be > 0 (or >= 0).
    finite : bool
        Require every value to be finite (default).

    Returns
    -------
    float or numpy.ndarray
        A float for a scalar, a float64 array otherwise.

    Raises
    ------
    TypeError
        A Quantity of the wrong dimension or a value that is not a number, e.g.
        ``temperature: expected a temperature (K), got 3.0 nm``.
    ValueError
        A value that is not finite or breaks the sign requirement, e.g.
        ``temperature must be > 0 K, got -300 K``.

    Examples
    --------
    >>> import openmm.unit as unit
    >>> to_openmm_units(2 * unit.femtosecond, "timestep", unit.picosecond)
    0.002
    >>> to_openmm_units(300, "temperature", unit.kelvin, positive=True)
    300.0
    """
    import numpy as np

    targets = (unit,) if isinstance(unit, u.Unit) else (None if unit is None else tuple(unit))
    try:
        magnitude, matched = _magnitude(value, targets)
    except LookupError:
        raise TypeError(f"{name}: expected {_describe(targets)}, got {_brief(value)}") from None
    if matched is None and (targets is None or len(targets) > 1):
        symbol = ""  # a plain number for one of several units: its unit is not known here
    else:
        symbol = _known(matched if matched is not None else targets[0])[1]
    if isinstance(magnitude, bool) or isinstance(magnitude, (str, bytes)) or magnitude is None:
        raise TypeError(f"{name}: expected {_describe(targets)} or a plain number in OpenMM's "
                        f"unit, got {value!r}")
    try:
        array = np.asarray(magnitude, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected {_describe(targets)} or plain numbers in OpenMM's "
                        f"unit, got {value!r}") from None

    def shown(x) -> str:
        if u.is_quantity(value) and array.ndim == 0:
            return str(value)
        return f"{x:g} {symbol}".rstrip()

    checks = [(finite, np.isfinite, "be finite"), (positive, lambda a: a > 0, f"be > 0 {symbol}"),
              (nonnegative, lambda a: a >= 0, f"be >= 0 {symbol}")]
    for wanted, test, requirement in checks:
        if not wanted:
            continue
        ok = test(array)
        if not np.all(ok):
            if array.ndim == 0:
                raise ValueError(f"{name} must {requirement.rstrip()}, got {shown(float(array))}")
            where = tuple(int(i) for i in np.argwhere(~ok)[0])
            raise ValueError(f"{name} must {requirement.rstrip()}, got {shown(float(array[where]))}"
                             f" at index {where[0] if len(where) == 1 else where}")
    return float(array) if array.ndim == 0 else array
