"""Descriptor front ends and :func:`descriptor_cv`: positions -> descriptors -> any CV model.

mlcolvar models, and the TorchScript files PLUMED users write for ``PYTORCH_MODEL``, take
*descriptors* (distances, angles, dihedrals, ...) rather than positions. The front ends below
compute those descriptors from positions as scriptable modules, and :func:`descriptor_cv`
puts one (or several, concatenated) in front of any scriptable model, giving a CV module
``positions (N, 3) nm -> (k,)`` that :func:`openmm_geom.export.export_model` exports with
``kind="cv"`` and :class:`openmm_geom.openmm.TorchCVForce` / ``Metadynamics`` run unchanged.

Units: positions in nm, so distances and positions are in nm and angles in radians, which are
also PLUMED's default units (``UNITS`` not given) and the units mlcolvar models trained on
PLUMED's ``COLVAR`` files expect. A model trained on descriptors in other units (Angstrom)
must be given descriptors in those units: scale them in the model, not here.

The front ends take the molecule as it is (no minimum image): the atoms must be whole, as in a
vacuum or implicit-solvent run (PLUMED's ``NOPBC``). Atom indices are 0-based, in the order of
the positions the module receives (the System's, or ``particles=`` of ``TorchCVForce``).
"""
from __future__ import annotations

import itertools
from typing import List, Optional, Sequence, Union

import torch

from .geometry import bond_angles, bond_lengths, dihedral_angles

__all__ = ["PairwiseDistances", "Distances", "Angles", "Torsions", "Positions",
           "DescriptorSet", "DescriptorCV", "descriptor_cv", "descriptors_from_spec"]


def _indices(values, width: int, what: str) -> torch.Tensor:
    index = torch.as_tensor(values, dtype=torch.int64)
    if index.numel() == 0:
        raise ValueError(f"at least one {what} is needed")
    if width > 1:
        if index.dim() == 1 and index.numel() == width:
            index = index.reshape(1, width)
        if index.dim() != 2 or index.shape[1] != width:
            raise ValueError(f"{what}s must be given as {width} atom indices each, got shape "
                             f"{tuple(index.shape)}")
    else:
        index = index.reshape(-1)
    if bool((index < 0).any()):
        raise ValueError("atom indices must be non-negative")
    return index


class _Descriptor(torch.nn.Module):
    """Common checks: the highest atom index, the feature names and the PLUMED lines."""

    def __init__(self, index: torch.Tensor):
        super().__init__()
        self.register_buffer("index", index)
        self.max_atom = int(index.max())
        self.n_features = 0  # set by subclasses

    def _check(self, positions: torch.Tensor) -> None:
        if positions.dim() != 2 or positions.size(1) != 3:
            raise ValueError("positions must have shape (N, 3), got " + str(list(positions.shape)))
        if self.max_atom >= positions.size(0):
            raise ValueError("a descriptor uses atom " + str(self.max_atom) + " but there are only "
                             + str(positions.size(0)) + " atoms")

    def plumed_lines(self, prefix: str):  # pragma: no cover - overridden
        raise NotImplementedError


class Distances(_Descriptor):
    """Distances of chosen atom pairs.

    Parameters
    ----------
    pairs : sequence of (i, j)
        0-based atom indices, m pairs.

    Notes
    -----
    ``forward(positions (N, 3) nm) -> (m,)`` distances in nm, in the order given.
    """

    kind = "distances"

    def __init__(self, pairs: Sequence[Sequence[int]]):
        super().__init__(_indices(pairs, 2, "pair"))
        self.n_features = int(self.index.shape[0])
        self.hyperparameters = {"kind": self.kind, "pairs": self.index.tolist()}

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        self._check(positions)
        return bond_lengths(positions, self.index)

    def feature_names(self) -> List[str]:
        return [f"d_{i}_{j}" for i, j in self.index.tolist()]

    def plumed_lines(self, prefix: str):
        """(PLUMED input lines, the ARG labels in feature order); atoms 1-based."""
        lines, args = [], []
        for n, (i, j) in enumerate(self.index.tolist()):
            label = f"{prefix}d{n}"
            lines.append(f"{label}: DISTANCE ATOMS={i + 1},{j + 1} NOPBC")
            args.append(label)
        return lines, args


class PairwiseDistances(Distances):
    """All pairwise distances of chosen atoms (e.g. the heavy atoms).

    Parameters
    ----------
    atoms : sequence of int
        n 0-based atom indices (at least 2, no repeats).

    Notes
    -----
    ``forward(positions (N, 3) nm) -> (n (n - 1) / 2,)`` in nm, pairs ordered as
    ``itertools.combinations(atoms, 2)`` (row-major upper triangle), the order of mlcolvar's
    and mdtraj's pair lists.
    """

    kind = "pairwise_distances"

    def __init__(self, atoms: Sequence[int]):
        atoms = [int(a) for a in atoms]
        if len(atoms) < 2 or len(set(atoms)) != len(atoms):
            raise ValueError("pairwise distances need at least two distinct atoms")
        super().__init__(list(itertools.combinations(atoms, 2)))
        self.hyperparameters = {"kind": self.kind, "atoms": atoms}


class Angles(_Descriptor):
    """Bond angles i-j-k (vertex j) of chosen atom triplets.

    Parameters
    ----------
    triplets : sequence of (i, j, k)
        0-based atom indices, m triplets.

    Notes
    -----
    ``forward(positions (N, 3) nm) -> (m,)`` angles in radians, in [0, pi].
    """

    kind = "angles"

    def __init__(self, triplets: Sequence[Sequence[int]]):
        super().__init__(_indices(triplets, 3, "triplet"))
        self.n_features = int(self.index.shape[0])
        self.hyperparameters = {"kind": self.kind, "triplets": self.index.tolist()}

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        self._check(positions)
        return bond_angles(positions, self.index)

    def feature_names(self) -> List[str]:
        return ["angle_" + "_".join(map(str, t)) for t in self.index.tolist()]

    def plumed_lines(self, prefix: str):
        lines, args = [], []
        for n, t in enumerate(self.index.tolist()):
            label = f"{prefix}a{n}"
            lines.append(f"{label}: ANGLE ATOMS={','.join(str(a + 1) for a in t)} NOPBC")
            args.append(label)
        return lines, args


class Torsions(_Descriptor):
    """Dihedral angles of chosen atom quadruplets, as (sin, cos) pairs or as angles.

    Parameters
    ----------
    quadruplets : sequence of (i, j, k, l)
        0-based atom indices, m quadruplets.
    sincos : bool
        True (default): ``(2 m,)`` features ``sin t0, cos t0, sin t1, cos t1, ...`` (smooth,
        no branch cut). False: the ``(m,)`` angles in radians, in (-pi, pi] (IUPAC sign, as
        mdtraj's ``compute_dihedrals`` and PLUMED's ``TORSION``).

    Notes
    -----
    ``forward(positions (N, 3) nm) -> (2 m,)`` or ``(m,)``, dimensionless or rad.
    """

    kind = "dihedrals"

    def __init__(self, quadruplets: Sequence[Sequence[int]], sincos: bool = True):
        super().__init__(_indices(quadruplets, 4, "quadruplet"))
        self.sincos = bool(sincos)
        m = int(self.index.shape[0])
        self.n_features = 2 * m if self.sincos else m
        self.hyperparameters = {"kind": self.kind, "quadruplets": self.index.tolist(),
                                "sincos": self.sincos}

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        self._check(positions)
        angles = dihedral_angles(positions, self.index)
        if self.sincos:
            return torch.stack([torch.sin(angles), torch.cos(angles)], dim=1).reshape(-1)
        return angles

    def feature_names(self) -> List[str]:
        names = ["dihedral_" + "_".join(map(str, q)) for q in self.index.tolist()]
        if not self.sincos:
            return names
        return [f"{f}({n})" for n in names for f in ("sin", "cos")]

    def plumed_lines(self, prefix: str):
        lines, args = [], []
        for n, q in enumerate(self.index.tolist()):
            label = f"{prefix}t{n}"
            lines.append(f"{label}: TORSION ATOMS={','.join(str(a + 1) for a in q)} NOPBC")
            if self.sincos:
                for f in ("sin", "cos"):
                    lines.append(f"{label}_{f}: CUSTOM ARG={label} FUNC={f}(x) PERIODIC=NO")
                    args.append(f"{label}_{f}")
            else:
                args.append(label)
        return lines, args


class Positions(_Descriptor):
    """Cartesian positions of chosen atoms, flattened.

    Parameters
    ----------
    atoms : sequence of int
        n 0-based atom indices.

    Notes
    -----
    ``forward(positions (N, 3) nm) -> (3 n,)`` in nm: ``x0, y0, z0, x1, ...``. Not invariant
    under translation or rotation; meant for models that align or centre the structure
    themselves, or for systems held in place.
    """

    kind = "positions"

    def __init__(self, atoms: Sequence[int]):
        super().__init__(_indices(atoms, 1, "atom"))
        self.n_features = 3 * int(self.index.shape[0])
        self.hyperparameters = {"kind": self.kind, "atoms": self.index.tolist()}

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        self._check(positions)
        return positions.index_select(0, self.index).reshape(-1)

    def feature_names(self) -> List[str]:
        return [f"{c}_{a}" for a in self.index.tolist() for c in "xyz"]

    def plumed_lines(self, prefix: str):
        lines, args = [], []
        for n, a in enumerate(self.index.tolist()):
            label = f"{prefix}p{n}"
            lines.append(f"{label}: POSITION ATOM={a + 1} NOPBC")
            args.extend(f"{label}.{c}" for c in "xyz")
        return lines, args


class DescriptorSet(torch.nn.Module):
    """Several front ends, their features concatenated in the order given.

    ``forward(positions (N, 3) nm) -> (sum of their features,)``.
    """

    def __init__(self, descriptors: Sequence[torch.nn.Module]):
        super().__init__()
        descriptors = list(descriptors)
        if not descriptors:
            raise ValueError("at least one descriptor front end is needed")
        self.parts = torch.nn.ModuleList(descriptors)
        self.n_features = sum(int(d.n_features) for d in descriptors)
        self.hyperparameters = {"kind": "set",
                                "parts": [dict(d.hyperparameters) for d in descriptors]}

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        features: List[torch.Tensor] = []
        for part in self.parts:
            features.append(part(positions))
        return torch.cat(features)

    def feature_names(self) -> List[str]:
        return [name for part in self.parts for name in part.feature_names()]

    def plumed_lines(self, prefix: str):
        lines, args = [], []
        for n, part in enumerate(self.parts):
            more, names = part.plumed_lines(f"{prefix}g{n}_")
            lines += more
            args += names
        return lines, args


def descriptors_from_spec(spec: dict) -> torch.nn.Module:
    """The front end a ``hyperparameters`` dict describes (as recorded in an exported file).

    Parameters
    ----------
    spec : dict
        ``front.hyperparameters`` of a front end of this module, e.g.
        ``{"kind": "distances", "pairs": [[0, 4], ...]}``.

    Returns
    -------
    torch.nn.Module
        An equal front end.
    """
    kind = spec.get("kind")
    if kind == "set":
        return DescriptorSet([descriptors_from_spec(part) for part in spec["parts"]])
    if kind == "pairwise_distances":
        return PairwiseDistances(spec["atoms"])
    if kind == "distances":
        return Distances(spec["pairs"])
    if kind == "angles":
        return Angles(spec["triplets"])
    if kind == "dihedrals":
        return Torsions(spec["quadruplets"], sincos=spec.get("sincos", True))
    if kind == "positions":
        return Positions(spec["atoms"])
    raise ValueError(f"unknown descriptor kind {kind!r}")


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float64


class DescriptorCV(torch.nn.Module):
    """``positions (N, 3) nm -> descriptors (D,) -> model -> (k,)``; see :func:`descriptor_cv`.

    Attributes
    ----------
    descriptors : the front end (``forward(positions) -> (D,)``)
    model : the wrapped model, called on ``(1, D)`` if ``batched`` else on ``(D,)``
    cv_names, cv_periods, hyperparameters : read by ``export_model``
    """

    def __init__(self, descriptors: torch.nn.Module, model: torch.nn.Module, batched: bool,
                 n_outputs: int, cv_names: Optional[Sequence[str]] = None,
                 cv_periods: Optional[Sequence[Optional[float]]] = None):
        super().__init__()
        self.descriptors = descriptors
        self.model = model
        self.batched = bool(batched)
        self.n_features = int(descriptors.n_features)
        self.n_outputs = int(n_outputs)
        # the features are cast to the model's dtype; follows .to(dtype) of the whole module
        self.register_buffer("model_dtype", torch.zeros(0, dtype=_model_dtype(model)))
        names = [f"cv{i}" for i in range(self.n_outputs)] if cv_names is None else list(cv_names)
        if len(names) != self.n_outputs:
            raise ValueError(f"{len(names)} cv_names for a model with {self.n_outputs} outputs")
        self.cv_names = [str(n) for n in names]
        if cv_periods is not None:
            self.cv_periods = list(cv_periods)
        self.hyperparameters = {"descriptors": dict(descriptors.hyperparameters),
                                "n_features": self.n_features, "batched": self.batched,
                                "model": type(model).__name__}

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        features = self.descriptors(positions).to(self.model_dtype.dtype)
        if self.batched:
            out = self.model(features.unsqueeze(0))
            if out.dim() != 2 or out.size(0) != 1:
                raise ValueError("a batched model must return shape (1, k), got "
                                 + str(list(out.shape)))
            out = out.squeeze(0)
        else:
            out = self.model(features)
        if out.dim() != 1:
            raise ValueError("the model must return k values, got shape " + str(list(out.shape)))
        return out.to(positions.dtype)


def _probe(model: torch.nn.Module, n_features: int, dtype: torch.dtype):
    """(batched, k): how the model takes ``n_features`` inputs. Tries (1, D) first, then (D,)."""
    tried = []
    for batched, shape in ((True, (1, n_features)), (False, (n_features,))):
        try:
            with torch.no_grad():
                out = model(torch.zeros(shape, dtype=dtype))
        except Exception as error:  # noqa: BLE001 - any failure means "not this layout"
            tried.append(f"{shape}: {str(error).strip().splitlines()[0] if str(error) else error}")
            continue
        if batched and out.dim() == 2 and out.size(0) == 1:
            return True, int(out.size(1))
        if not batched and out.dim() == 1:
            return False, int(out.size(0))
        tried.append(f"{shape}: returned shape {tuple(out.shape)}")
    raise ValueError(f"the model takes neither (1, {n_features}) nor ({n_features},) inputs "
                     "to (1, k) or (k,) outputs: " + "; ".join(tried))


def descriptor_cv(descriptors: Union[torch.nn.Module, Sequence[torch.nn.Module]],
                  model: torch.nn.Module, *, cv_names: Optional[Sequence[str]] = None,
                  cv_periods: Optional[Sequence[Optional[float]]] = None,
                  batched: Optional[bool] = None,
                  dtype: Optional[torch.dtype] = None) -> DescriptorCV:
    """A CV module ``positions (N, 3) nm -> (k,)``: descriptor front end(s), then ``model``.

    Parameters
    ----------
    descriptors : module or sequence of modules
        Front ends of this module (:class:`PairwiseDistances`, :class:`Distances`,
        :class:`Angles`, :class:`Torsions`, :class:`Positions`); several are concatenated in
        the order given. Distances in nm, angles in rad (PLUMED's default units).
    model : torch.nn.Module or torch.jit.ScriptModule
        Any scriptable model of the D descriptors: an mlcolvar CV (``(B, D) -> (B, k)``), a
        TorchScript file written for PLUMED's ``PYTORCH_MODEL`` (``torch.jit.load``; PLUMED
        calls it on ``(1, D)``), or a module of ours (``(D,) -> (k,)``).
    cv_names : sequence of str, optional
        One name per output (default ``cv0 .. cv{k-1}``); ``export_model`` records them and
        ``TorchCVForce`` uses them in its energy expression.
    cv_periods : sequence of (float or None), optional
        Per output, its period, or None if not periodic (default: none periodic).
    batched : bool, optional
        Whether ``model`` takes a batch dimension. Default: found by calling it on zeros of
        shape ``(1, D)`` (then the output must be ``(1, k)``), else ``(D,)``.
    dtype : torch.dtype, optional
        Cast the model (parameters and buffers, in place, as ``model.to(dtype)`` does) to
        this dtype, e.g. ``torch.float64`` for a float32 mlcolvar model run in a float64
        Reference Context. Default: as it is.

    Returns
    -------
    DescriptorCV
        Scriptable; export it with ``export_model(cv, path, kind="cv", length_unit="nm",
        periodic=False, example_positions=...)``. The features are cast to the model's dtype
        and the outputs back to the positions' dtype.
    """
    front = descriptors if isinstance(descriptors, torch.nn.Module) else DescriptorSet(descriptors)
    if not hasattr(front, "n_features"):
        raise ValueError("the descriptor front end must have an n_features attribute "
                         "(use the classes of openmm_geom.models.descriptors)")
    if dtype is not None:
        model = model.to(dtype)
    if isinstance(model, torch.nn.Module):
        model = model.eval()
    if batched is None:
        batched, k = _probe(model, int(front.n_features), _model_dtype(model))
    else:
        with torch.no_grad():
            shape = (1, int(front.n_features)) if batched else (int(front.n_features),)
            out = model(torch.zeros(shape, dtype=_model_dtype(model)))
        k = int(out.shape[-1])
    return DescriptorCV(front, model, batched, k, cv_names=cv_names, cv_periods=cv_periods)
