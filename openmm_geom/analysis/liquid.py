"""Liquid-state checks of an ML potential: radial distribution functions, NVE drift, parity plots.

* :func:`radial_distribution` -- g(r) of an element pair from position and box arrays (nm), with
  ``mdtraj.compute_rdf`` (minimum image, triclinic boxes included);
* :func:`rdf_error` -- how far one g(r) is from another: mean absolute difference and the
  first-peak height and position errors;
* :func:`nve_drift` -- drift of the total energy in a constant-energy run (kJ/mol/ns/atom) and
  its fluctuation relative to the kinetic energy's;
* :func:`plot_rdfs`, :func:`plot_force_parity` -- PNG figures (Agg canvas, written atomically).

Units: nm, kJ/mol, kJ/mol/nm, ps.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..io import save_figure

__all__ = ["half_min_width", "nve_drift", "plot_force_parity", "plot_rdfs", "radial_distribution",
           "rdf_error"]

PathLike = Union[str, Path]
_DISTANCES_PER_CHUNK = 4_000_000  # float32 distances held at once (16 MB)


# --- radial distribution functions -------------------------------------------------------

def _as_boxes(boxes, n_frames: int) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape == (3, 3):
        boxes = np.broadcast_to(boxes, (n_frames, 3, 3))
    if boxes.shape != (n_frames, 3, 3):
        raise ValueError(f"boxes must have shape ({n_frames}, 3, 3) or (3, 3) (nm, rows a, b, "
                         f"c), got {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError("boxes contain NaN or infinite values")
    # mdtraj keeps only lengths and angles and rebuilds a along x, b in the xy plane, so boxes
    # in any other orientation would no longer match the positions
    upper = np.abs(boxes[:, [0, 0, 1], [1, 2, 2]])
    if (upper > 1e-6 * np.abs(boxes).max()).any():
        raise ValueError("boxes must be in OpenMM's reduced form (a along x, b in the xy plane: "
                         "box[0, 1] = box[0, 2] = box[1, 2] = 0); rotate positions and boxes "
                         "together first")
    if not (np.linalg.det(boxes) > 0).all():
        raise ValueError("boxes must have positive volume (rows a, b, c, right-handed)")
    return boxes


def half_min_width(boxes: np.ndarray) -> float:
    """Half the smallest distance between opposite faces of any of the boxes (nm).

    Minimum-image distances are unique (and a g(r) unbiased) only up to this radius.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 3, 3)
    volumes = np.abs(np.linalg.det(boxes))
    widths = [volumes / np.linalg.norm(np.cross(boxes[:, j], boxes[:, k]), axis=-1)
              for j, k in ((1, 2), (2, 0), (0, 1))]
    return float(0.5 * np.min(widths))


def _mdtraj_topology(atoms, n_atoms: int):
    """An mdtraj Topology from atomic numbers, an mdtraj Topology or an OpenMM Topology."""
    import mdtraj

    if isinstance(atoms, mdtraj.Topology):
        topology = atoms
    elif hasattr(atoms, "atoms") and hasattr(atoms, "residues"):  # openmm.app.Topology
        topology = mdtraj.Topology.from_openmm(atoms)
    else:
        numbers = np.asarray(atoms)
        if numbers.ndim != 1 or not np.issubdtype(numbers.dtype, np.integer):
            raise ValueError("atoms must be atomic numbers (N,) ints, an mdtraj Topology or an "
                             f"OpenMM Topology, got {type(atoms).__name__} "
                             f"{getattr(numbers, 'shape', '')}")
        topology = mdtraj.Topology()
        chain = topology.add_chain()
        for z in numbers.tolist():
            try:
                element = mdtraj.element.Element.getByAtomicNumber(int(z))
            except KeyError:
                raise ValueError(f"unknown atomic number {z}") from None
            # one residue per atom: without bonds there is no molecule to exclude pairs within
            topology.add_atom(element.symbol, element, topology.add_residue("UNK", chain))
    if topology.n_atoms != n_atoms:
        raise ValueError(f"the topology has {topology.n_atoms} atoms but positions have "
                         f"{n_atoms}")
    return topology


def _select(topology, symbol: str) -> np.ndarray:
    want = symbol.strip().lower()
    index = np.array([a.index for a in topology.atoms
                      if a.element is not None and a.element.symbol.lower() == want], np.int64)
    if index.size == 0:
        present = sorted({a.element.symbol for a in topology.atoms if a.element is not None})
        raise ValueError(f"no atoms of element {symbol!r} (elements present: {present})")
    return index


def _pairs(topology, pair: Sequence[str], intermolecular: bool) -> np.ndarray:
    first, second = _select(topology, pair[0]), _select(topology, pair[1])
    if pair[0].strip().lower() == pair[1].strip().lower():
        if first.size < 2:
            raise ValueError(f"need at least two {pair[0]} atoms for a {pair[0]}-{pair[1]} RDF")
        pairs = np.array(list(itertools.combinations(first.tolist(), 2)), np.int64)
    else:
        pairs = np.array(list(itertools.product(first.tolist(), second.tolist())), np.int64)
    if intermolecular:
        residue = np.array([a.residue.index for a in topology.atoms])
        pairs = pairs[residue[pairs[:, 0]] != residue[pairs[:, 1]]]
        if len(pairs) == 0:
            raise ValueError(f"no {pair[0]}-{pair[1]} pairs between different residues")
    return pairs


def radial_distribution(
    positions,
    boxes,
    atoms,
    pair: Tuple[str, str] = ("O", "O"),
    r_max: Optional[float] = None,
    bins: int = 200,
    *,
    intermolecular: bool = True,
) -> Tuple[np.ndarray, np.ndarray]:
    """Radial distribution function g(r) of an element pair, averaged over frames.

    Parameters
    ----------
    positions : array_like, shape (F, N, 3) or (N, 3)
        nm; need not be wrapped into the box.
    boxes : array_like, shape (F, 3, 3) or (3, 3)
        Periodic box vectors in nm, rows a, b, c in OpenMM's reduced (lower-triangular) form;
        triclinic boxes are handled (minimum image over neighbouring cells, by mdtraj).
    atoms : array_like of int (N,), mdtraj.Topology or openmm.app.Topology
        Atomic numbers, or a topology. With a topology and ``intermolecular=True``, pairs in the
        same residue are left out (the usual intermolecular O-H and H-H RDFs of water); atomic
        numbers carry no molecules, so then every pair counts.
    pair : (str, str)
        Element symbols, e.g. ``("O", "O")``, ``("O", "H")``. Same element: each unordered pair
        once; different elements: every (first, second) pair.
    r_max : float, optional
        Upper end of the range (nm); at most half the smallest box width (the distance between
        opposite faces), beyond which minimum-image distances undercount. Default: that value
        rounded down to 0.001 nm, so frames with equal boxes give identical bins.
    bins : int
        Number of equal-width bins on ``[0, r_max]``.
    intermolecular : bool
        Leave out pairs within a residue (topologies only).

    Returns
    -------
    r : numpy.ndarray, shape (bins,)
        Bin centres, nm.
    g : numpy.ndarray, shape (bins,)
        g(r) = counts / (pairs * sum_frames(1/V) * shell volume), mdtraj's normalisation (as
        cpptraj and gmx rdf): 1 for uncorrelated positions.
    """
    import mdtraj

    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim == 2:
        positions = positions[None]
    if positions.ndim != 3 or positions.shape[2] != 3 or 0 in positions.shape:
        raise ValueError(f"positions must have shape (frames, atoms, 3) in nm, got "
                         f"{positions.shape}")
    if not np.isfinite(positions).all():
        raise ValueError("positions contain NaN or infinite values")
    if boxes is None:
        raise ValueError("an RDF of a liquid needs periodic boxes (got boxes=None)")
    n_frames, n_atoms = positions.shape[:2]
    boxes = _as_boxes(boxes, n_frames)
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    if len(pair) != 2:
        raise ValueError(f"pair must be two element symbols, got {pair!r}")
    limit = half_min_width(boxes)
    if r_max is None:
        r_max = math.floor(limit * 1000 + 1e-9) / 1000
    elif not (0 < r_max <= limit * (1 + 1e-9)):
        raise ValueError(f"r_max = {r_max} nm must be positive and at most half the smallest "
                         f"box width, {limit:.4g} nm (beyond it periodic images are missed)")
    topology = _mdtraj_topology(atoms, n_atoms)
    pairs = _pairs(topology, pair, intermolecular)

    # g over all frames = sum over chunks of g_chunk weighted by the chunk's sum of 1/V, since
    # mdtraj normalises each call by its own sum of 1/V
    chunk = max(1, _DISTANCES_PER_CHUNK // len(pairs))
    total, weight, r = 0.0, 0.0, None
    for start in range(0, n_frames, chunk):
        stop = min(start + chunk, n_frames)
        trajectory = mdtraj.Trajectory(positions[start:stop].astype(np.float32), topology)
        trajectory.unitcell_vectors = boxes[start:stop].astype(np.float32)
        r, g = mdtraj.compute_rdf(trajectory, pairs, r_range=(0.0, float(r_max)), n_bins=bins,
                                  periodic=True)
        w = float(np.sum(1.0 / trajectory.unitcell_volumes))
        total, weight = total + g * w, weight + w
    return np.asarray(r, np.float64), np.asarray(total / weight, np.float64)


def _first_peak(r: np.ndarray, g: np.ndarray) -> Tuple[float, float]:
    above = np.flatnonzero(g > 1.0)
    if above.size == 0:
        i = int(np.argmax(g))
        return float(r[i]), float(g[i])
    start = above[0]
    below = np.flatnonzero(g[start:] < 1.0)
    stop = start + below[0] if below.size else len(g)
    i = start + int(np.argmax(g[start:stop]))
    return float(r[i]), float(g[i])


def rdf_error(r, g_model, g_reference) -> dict:
    """How far a model's g(r) is from a reference g(r) on the same bins.

    Parameters
    ----------
    r : array_like, shape (B,)
        Equal-width bin centres, nm (as from :func:`radial_distribution`).
    g_model, g_reference : array_like, shape (B,)

    Returns
    -------
    dict
        ``rdf_mae``: mean over the bins of ``|g_model - g_reference|``, which for equal bins is
        ``integral |delta g| dr / (r_max - r_min)`` of the piecewise-constant histograms
        (dimensionless; 0 is perfect). ``rdf_max_abs_error``: the largest ``|delta g|``.
        ``first_peak_height_error`` (dimensionless) and ``first_peak_position_error_nm``: model
        minus reference at each curve's first peak, the maximum of g over the first stretch of
        bins where g > 1 (the first solvation shell; the global maximum if g never exceeds 1).
        Also each curve's peak: ``first_peak_{height,position_nm}_{model,reference}``.
        Contacts: ``closest_nm_{model,reference}``, the centre of each curve's first bin with
        g > 0 (None if none), and ``unseen_contact_nm``, how much closer than the reference
        ever came the model's closest pair is (> 0: the model makes contacts the reference
        never makes; 0 otherwise).
    """
    r = np.asarray(r, dtype=np.float64)
    g_model = np.asarray(g_model, dtype=np.float64)
    g_reference = np.asarray(g_reference, dtype=np.float64)
    if r.ndim != 1 or g_model.shape != r.shape or g_reference.shape != r.shape or r.size < 2:
        raise ValueError(f"r, g_model and g_reference must be 1-D of one length >= 2, got "
                         f"{r.shape}, {g_model.shape}, {g_reference.shape}")
    if not (np.isfinite(g_model).all() and np.isfinite(g_reference).all()):
        raise ValueError("g_model and g_reference must be finite")
    widths = np.diff(r)
    if not np.allclose(widths, widths[0], rtol=1e-4, atol=0.0) or widths[0] <= 0:
        raise ValueError("r must be increasing equal-width bin centres (compute both RDFs with "
                         "the same r_max and bins)")
    difference = np.abs(g_model - g_reference)
    r_model, h_model = _first_peak(r, g_model)
    r_ref, h_ref = _first_peak(r, g_reference)
    closest_model, closest_ref = (float(r[np.argmax(g > 0)]) if (g > 0).any() else None
                                  for g in (g_model, g_reference))
    return {
        "rdf_mae": float(difference.mean()),
        "rdf_max_abs_error": float(difference.max()),
        "first_peak_height_error": h_model - h_ref,
        "first_peak_position_error_nm": r_model - r_ref,
        "first_peak_height_model": h_model,
        "first_peak_height_reference": h_ref,
        "first_peak_position_nm_model": r_model,
        "first_peak_position_nm_reference": r_ref,
        "closest_nm_model": closest_model,
        "closest_nm_reference": closest_ref,
        "unseen_contact_nm": (max(closest_ref - closest_model, 0.0)
                              if closest_model is not None and closest_ref is not None else 0.0),
    }


# --- NVE energy conservation ---------------------------------------------------------------

def nve_drift(times_ps, total_energies_kj, n_atoms: int, kinetic_energies=None) -> dict:
    """Energy conservation of a constant-energy run: linear drift and fluctuations.

    Parameters
    ----------
    times_ps : array_like, shape (T,)
        Sample times, ps, strictly increasing.
    total_energies_kj : array_like, shape (T,)
        Total (potential + kinetic) energy, kJ/mol.
    n_atoms : int
        Atoms in the system, to express the drift per atom.
    kinetic_energies : array_like, shape (T,), optional
        Kinetic energy, kJ/mol, for the fluctuation ratio.

    Returns
    -------
    dict
        ``drift_kj_mol_per_ns_per_atom``: slope of a least-squares line through the total
        energy, kJ/mol/ns divided by ``n_atoms`` (signed; a good integrator gives |drift| much
        below kT = 2.5 kJ/mol per ns per atom). ``drift_kj_mol_per_ns``: the same for the
        whole system. ``total_energy_std_kj_mol``: standard deviation of the total energy;
        ``total_energy_detrended_std_kj_mol``: of its residual about the line. With kinetic
        energies also ``kinetic_energy_std_kj_mol`` and ``fluctuation_ratio`` = detrended total
        std / kinetic std (the time-step error relative to thermal fluctuations; well below
        0.05 for a good run). ``duration_ps``, ``samples``.
    """
    t = np.asarray(times_ps, dtype=np.float64)
    e = np.asarray(total_energies_kj, dtype=np.float64)
    if t.ndim != 1 or e.shape != t.shape:
        raise ValueError(f"times_ps and total_energies_kj must be 1-D of one length, got "
                         f"{t.shape} and {e.shape}")
    if t.size < 3:
        raise ValueError(f"need at least 3 samples to fit a drift, got {t.size}")
    if not (np.isfinite(t).all() and np.isfinite(e).all()):
        bad = int(np.flatnonzero(~(np.isfinite(t) & np.isfinite(e)))[0])
        raise ValueError(f"times or energies are not finite (first at sample {bad}): the run "
                         f"blew up")
    if not (np.diff(t) > 0).all():
        raise ValueError("times_ps must be strictly increasing")
    if isinstance(n_atoms, bool) or not isinstance(n_atoms, (int, np.integer)) or n_atoms < 1:
        raise ValueError(f"n_atoms must be a positive integer, got {n_atoms!r}")
    slope, intercept = np.polyfit(t, e, 1)  # kJ/mol/ps
    residual = e - (slope * t + intercept)
    result = {
        "drift_kj_mol_per_ns_per_atom": float(slope * 1000.0 / n_atoms),
        "drift_kj_mol_per_ns": float(slope * 1000.0),
        "total_energy_std_kj_mol": float(e.std()),
        "total_energy_detrended_std_kj_mol": float(residual.std()),
        "duration_ps": float(t[-1] - t[0]),
        "samples": int(t.size),
    }
    if kinetic_energies is not None:
        k = np.asarray(kinetic_energies, dtype=np.float64)
        if k.shape != t.shape or not np.isfinite(k).all():
            raise ValueError(f"kinetic_energies must be finite with shape {t.shape}, got "
                             f"{k.shape}")
        k_std = float(k.std())
        result["kinetic_energy_std_kj_mol"] = k_std
        result["fluctuation_ratio"] = (float(residual.std()) / k_std if k_std > 0
                                       else float("nan"))
    return result


# --- figures -------------------------------------------------------------------------------

def plot_rdfs(curves: Mapping, path: PathLike, *, title: Optional[str] = None,
              dpi: int = 120) -> Path:
    """g(r) curves in one panel, or one panel per group.

    Parameters
    ----------
    curves : mapping of name to (r, g), or of panel title to such a mapping
        r in nm. Curves whose name contains "reference" are drawn as thick grey lines under
        the others.
    path : str or Path
        Output PNG (parent directories are created; written atomically).
    title : str, optional
    dpi : int

    Returns
    -------
    pathlib.Path
    """
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("no RDF curves given")
    grouped = all(isinstance(v, Mapping) for v in curves.values())
    panels = dict(curves) if grouped else {title or "": dict(curves)}
    fig = Figure(figsize=(4.2 * len(panels) + 0.6, 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, members) in zip(axes, panels.items()):
        for name, (r, g) in members.items():
            r, g = np.asarray(r), np.asarray(g)
            if r.shape != g.shape or r.ndim != 1:
                raise ValueError(f"curve {name!r}: r and g must be 1-D of one length, got "
                                 f"{r.shape} and {g.shape}")
            if "reference" in str(name).lower():
                ax.plot(r, g, color="0.55", lw=3.0, label=name, zorder=1)
            else:
                ax.plot(r, g, lw=1.5, label=name, zorder=2)
        ax.axhline(1.0, color="0.8", lw=0.8, ls=":", zorder=0)
        ax.set(xlabel="r (nm)", ylabel="g(r)", title=panel)
        ax.set_xlim(left=0.0)
        ax.legend(fontsize=8)
    if grouped and title:
        fig.suptitle(title)
    return save_figure(fig, path, dpi)


def _element_symbol(z: int) -> str:
    try:
        import mdtraj

        return mdtraj.element.Element.getByAtomicNumber(int(z)).symbol
    except (ImportError, KeyError):
        return f"Z={z}"


def plot_force_parity(
    reference_forces,
    predicted_forces,
    path: PathLike,
    atomic_numbers=None,
    *,
    per_element=None,
    max_points: int = 20_000,
    seed: int = 0,
    title: Optional[str] = None,
    dpi: int = 120,
) -> Path:
    """Parity plot of predicted against reference force components, with MAE and RMSE.

    Parameters
    ----------
    reference_forces, predicted_forces : array_like, shape (..., N, 3)
        kJ/mol/nm, e.g. (frames, atoms, 3); the same shape.
    path : str or Path
        Output PNG (written atomically).
    atomic_numbers : array_like of int, shape (N,), optional
        Colour the points by element and give each element's MAE/RMSE in the legend.
    per_element : array_like of int, shape (N,), optional
        Same as ``atomic_numbers`` (give one of the two).
    max_points : int
        Components drawn at most (a random subsample with ``seed``, shared out in proportion
        to each element's count); MAE and RMSE always use every component.
    seed : int
    title : str, optional
    dpi : int

    Returns
    -------
    pathlib.Path
    """
    from matplotlib.figure import Figure

    if atomic_numbers is not None and per_element is not None:
        raise ValueError("give atomic_numbers or per_element, not both")
    numbers = atomic_numbers if atomic_numbers is not None else per_element
    reference = np.asarray(reference_forces, dtype=np.float64)
    predicted = np.asarray(predicted_forces, dtype=np.float64)
    if reference.shape != predicted.shape or reference.ndim < 2 or reference.shape[-1] != 3:
        raise ValueError(f"reference and predicted forces must have one shape (..., N, 3), got "
                         f"{reference.shape} and {predicted.shape}")
    if not (np.isfinite(reference).all() and np.isfinite(predicted).all()):
        raise ValueError("forces contain NaN or infinite values")
    n_atoms = reference.shape[-2]
    reference = reference.reshape(-1, n_atoms, 3)
    predicted = predicted.reshape(-1, n_atoms, 3)
    groups = {"all atoms": np.ones(n_atoms, bool)}
    if numbers is not None:
        numbers = np.asarray(numbers).astype(np.int64)
        if numbers.shape != (n_atoms,):
            raise ValueError(f"atomic_numbers must have shape ({n_atoms},), got {numbers.shape}")
        groups = {_element_symbol(z): numbers == z for z in np.unique(numbers)}

    rng = np.random.default_rng(seed)
    total = reference.size
    fig = Figure(figsize=(5.2, 5.0), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    error = predicted - reference
    overall = (float(np.abs(error).mean()), float(np.sqrt((error ** 2).mean())))
    for name, mask in groups.items():
        x, y = reference[:, mask].ravel(), predicted[:, mask].ravel()
        d = y - x
        mae, rmse = float(np.abs(d).mean()), float(np.sqrt((d ** 2).mean()))
        keep = max(1, int(round(max_points * x.size / total)))
        if x.size > keep:
            chosen = rng.choice(x.size, size=keep, replace=False)
            x, y = x[chosen], y[chosen]
        ax.scatter(x, y, s=3, alpha=0.35, linewidths=0, rasterized=True,
                   label=f"{name}: MAE {mae:.3g}, RMSE {rmse:.3g}")
    low = float(min(reference.min(), predicted.min()))
    high = float(max(reference.max(), predicted.max()))
    ax.plot([low, high], [low, high], color="k", lw=0.8, ls="--", label="y = x")
    ax.set(xlim=(low, high), ylim=(low, high), aspect="equal",
           xlabel="reference force component (kJ/mol/nm)",
           ylabel="predicted force component (kJ/mol/nm)",
           title=title or f"forces: MAE {overall[0]:.3g}, RMSE {overall[1]:.3g} kJ/mol/nm")
    ax.legend(fontsize=7, loc="upper left", markerscale=3)
    return save_figure(fig, path, dpi)
