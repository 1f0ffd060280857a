"""What every all-atom ML potential in openmm-geom shares: species bookkeeping and energy offsets.

An :class:`AtomisticPotential` is built for one system (its ``atomic_numbers``, in atom order)
and knows the set of elements it was trained on (``elements``). Subclasses implement
:meth:`AtomisticPotential.interaction_energies` on a batch of frames; this base adds the
per-element energy offsets and an energy scale (fitted by least squares before training, see
:func:`fit_energy_offsets`) and gives the two call forms:

- ``energies(positions[B, N, 3], boxes[B, 3, 3] or None) -> (B,)`` for training;
- ``forward(positions[N, 3], box[3, 3] or None) -> ()``, the export contract (OpenMM units).

Units: nm in, kJ/mol out, everywhere. :meth:`AtomisticPotential.for_atoms` gives the same
trained model for another system of the same elements (e.g. a larger water box); an element it
was not trained on is a clear error.
"""
from __future__ import annotations

import copy
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..ops.neighbors import NeighborPairs, check_cutoff

__all__ = ["AtomisticPotential", "fit_energy_offsets", "species_indices", "smooth_envelope",
           "REPULSION_EPSILON"]

# kJ/mol: the core repulsion is eps (sigma/r)^12, 0.28 kJ/mol at the closest distance seen
REPULSION_EPSILON = 1.0


def species_indices(atomic_numbers: Sequence[int], elements: Sequence[int]) -> torch.Tensor:
    """Index of each atom's element in ``elements``; a ValueError for an unseen element."""
    position = {int(z): i for i, z in enumerate(elements)}
    unseen = sorted({int(z) for z in atomic_numbers} - set(position))
    if unseen:
        raise ValueError(
            f"atomic numbers {unseen} were not in the training data: this model knows only "
            f"elements {sorted(position)} and cannot predict energies for others")
    return torch.tensor([position[int(z)] for z in atomic_numbers], dtype=torch.int64)


def fit_energy_offsets(energies: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-element energies ``b`` minimising ``|counts @ b - energies|`` (least squares).

    Parameters
    ----------
    energies : (frames,) kJ/mol
    counts : (frames, elements) how many atoms of each element each frame has

    Returns
    -------
    (elements,) kJ/mol per atom. With a single composition (one liquid box) the problem is
    rank-deficient and the minimum-norm solution spreads the mean energy over the atoms in
    proportion to their counts, which is all the data can say.
    """
    energies = np.asarray(energies, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != energies.shape[0]:
        raise ValueError(f"counts {counts.shape} must be (frames, elements) for {energies.shape[0]} frames")
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return solution


def smooth_envelope(distances: torch.Tensor, cutoff: float) -> torch.Tensor:
    """1 at r = 0, 0 at and beyond ``cutoff``, with vanishing first and second derivatives there.

    The polynomial envelope of DimeNet with p = 6, ``1 - 28 x^6 + 48 x^7 - 21 x^8`` (x = r/rc):
    flat near 0 (0.86 at half the cutoff), so that neighbours in the first shells keep most
    of their weight and only the outer part of the sphere is damped.
    """
    x = torch.clamp(distances / cutoff, 0.0, 1.0)
    x6 = x ** 6
    return 1.0 - x6 * (28.0 - x * (48.0 - 21.0 * x))


class AtomisticPotential(torch.nn.Module):
    """Base class: subclasses implement ``interaction_energies`` and call ``super().__init__``.

    Parameters
    ----------
    atomic_numbers : sequence of int (N,)
        The system's atoms, in order.
    elements : sequence of int, optional
        Every element the model can handle (default: those in ``atomic_numbers``), sorted.
    cutoff : float
        Interaction cutoff in nm.
    """

    def __init__(self, atomic_numbers: Sequence[int], elements: Optional[Sequence[int]] = None,
                 cutoff: float = 0.5):
        super().__init__()
        atomic_numbers = [int(z) for z in atomic_numbers]
        if not atomic_numbers:
            raise ValueError("atomic_numbers is empty")
        if min(atomic_numbers) < 1:
            raise ValueError("atomic numbers must be >= 1 (virtual sites and unknown elements "
                             "have no chemistry a potential can learn)")
        self.elements: List[int] = sorted({int(z) for z in (elements or atomic_numbers)})
        check_cutoff(cutoff)
        self.cutoff = float(cutoff)
        self.register_buffer("atomic_numbers", torch.tensor(atomic_numbers, dtype=torch.int64))
        self.register_buffer("species", species_indices(atomic_numbers, self.elements))
        self.register_buffer("energy_offsets", torch.zeros(len(self.elements), dtype=torch.float64))
        # Multiplies the network's energy: set from the data before training (a network whose
        # output starts at the data's scale trains faster than one that has to learn it).
        self.register_buffer("energy_scale", torch.ones((), dtype=torch.float64))
        # Core repulsion between element pairs (0 = none), fitted from the closest distances in
        # the training data: where the data have no configurations, a network's energy is
        # arbitrary, and atoms can fall into each other in MD (observed: two oxygens of a
        # water box at 0.003 nm).
        self.register_buffer("repulsion_sigma", torch.zeros(len(self.elements), len(self.elements),
                                                            dtype=torch.float64))
        # One pair search per frame serves the core repulsion and, in subclasses that set
        # shares_pairs (their network takes the pairs within the cutoff), the network too.
        self.neighbors = NeighborPairs(self.cutoff)
        self.shares_pairs = False
        self.repulsion_epsilon = REPULSION_EPSILON
        # whether any repulsion_sigma is > 0, kept as a Python flag so that a call does not read
        # the buffer back to decide (set_repulsion and load_state_dict keep it current)
        self.has_repulsion = False

    # -- bookkeeping (Python only) -------------------------------------------------------------
    @torch.jit.unused
    def for_atoms(self, atomic_numbers: Sequence[int]) -> "AtomisticPotential":
        """A copy of this (trained) model for another system made of the same elements."""
        species = species_indices(atomic_numbers, self.elements).to(self.species.device)
        clone = copy.deepcopy(self)
        clone.atomic_numbers = torch.tensor([int(z) for z in atomic_numbers], dtype=torch.int64,
                                            device=self.species.device)
        clone.species = species
        return clone

    @torch.jit.unused
    def set_energy_offsets(self, offsets: Dict[int, float]) -> None:
        """Per-element energies (kJ/mol per atom) added to the network's energy."""
        values = torch.zeros(len(self.elements), dtype=torch.float64)
        for i, z in enumerate(self.elements):
            values[i] = float(offsets.get(z, 0.0))
        self.energy_offsets = values.to(self.energy_offsets.device)

    @torch.jit.unused
    def set_energy_scale(self, scale: float) -> None:
        """Energy unit of the network's raw output, in kJ/mol (set from the data's spread)."""
        if not scale > 0:
            raise ValueError(f"energy scale must be positive, got {scale}")
        self.energy_scale = torch.tensor(float(scale), dtype=torch.float64,
                                         device=self.energy_scale.device)

    @torch.jit.unused
    def set_repulsion(self, sigma: Dict[Tuple[int, int], float]) -> None:
        """Core repulsion ``eps (sigma_ab/r)^12`` per element pair (nm; eps = 1 kJ/mol).

        Each pair term is multiplied by a smooth envelope that vanishes at ``2 sigma_ab`` (at
        most the model cutoff), so it is continuous and negligible where the data live.
        """
        values = torch.zeros(len(self.elements), len(self.elements), dtype=torch.float64)
        index = {z: i for i, z in enumerate(self.elements)}
        for (a, b), value in sigma.items():
            value = min(float(value), self.cutoff / 2)
            if value < 0 or not math.isfinite(value):
                raise ValueError(f"repulsion sigma must be >= 0 nm, got {value}")
            values[index[int(a)], index[int(b)]] = values[index[int(b)], index[int(a)]] = value
        self.repulsion_sigma = values.to(self.repulsion_sigma.device)
        self.has_repulsion = bool((values > 0).any())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.has_repulsion = bool((self.repulsion_sigma > 0).any())

    @torch.jit.unused
    def element_counts(self) -> np.ndarray:
        """(elements,) how many atoms of each known element this system has."""
        return np.bincount(self.species.cpu().numpy(), minlength=len(self.elements))

    # -- computation ---------------------------------------------------------------------------
    def interaction_energies(self, positions: torch.Tensor, boxes: Optional[torch.Tensor],
                             pairs: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                   torch.Tensor]]
                             ) -> torch.Tensor:
        """(B,) network energies in kJ/mol of ``positions`` (B, N, 3) nm; boxes (B, 3, 3) nm.

        ``pairs``: :meth:`pairs` of the batch if ``shares_pairs`` is set or the core repulsion
        is on, else None.
        """
        raise NotImplementedError

    def pairs(self, positions: torch.Tensor, boxes: Optional[torch.Tensor]
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every pair within the cutoff in every frame:
        ``(first[P], second[P], vectors[P, 3], distances[P])``.

        Indices count atoms over the whole batch (atom ``a`` of frame ``b`` is ``b N + a``);
        ``vectors`` are ``r_second - r_first`` of the nearest periodic image and ``distances``
        their lengths, in nm, in the dtype of ``positions``, differentiable.
        """
        n_atoms = positions.size(1)
        first: List[torch.Tensor] = []
        second: List[torch.Tensor] = []
        displacements: List[torch.Tensor] = []
        lengths: List[torch.Tensor] = []
        for b in range(positions.size(0)):
            box: Optional[torch.Tensor] = None
            if boxes is not None:
                box = boxes[b].to(positions.dtype)
            found, vectors, distances = self.neighbors(positions[b], box)
            first.append(found[0] + b * n_atoms)
            second.append(found[1] + b * n_atoms)
            displacements.append(vectors)
            lengths.append(distances)
        return torch.cat(first), torch.cat(second), torch.cat(displacements), torch.cat(lengths)

    def energies(self, positions: torch.Tensor, boxes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B,) total energies (kJ/mol) of a batch of frames ``positions`` (B, N, 3) in nm.

        ``boxes`` (B, 3, 3) nm, rows a, b, c, for a periodic system; ``None`` otherwise.
        """
        if positions.dim() != 3 or positions.size(2) != 3:
            raise ValueError("positions must have shape (B, N, 3), got " + str(list(positions.shape)))
        if positions.size(1) != self.species.size(0):
            raise ValueError("wrong atom count: the model was built for " + str(self.species.size(0))
                             + " atoms, got " + str(positions.size(1))
                             + " (use for_atoms(atomic_numbers) for another system)")
        if boxes is not None:
            if boxes.dim() != 3 or boxes.size(0) != positions.size(0) or boxes.size(1) != 3 \
                    or boxes.size(2) != 3:
                raise ValueError("boxes must have shape (B, 3, 3), got " + str(list(boxes.shape)))
        offset = self.energy_offsets.index_select(0, self.species).sum().to(positions.dtype)
        scale = self.energy_scale.to(positions.dtype)
        repulsion = self.has_repulsion
        pairs: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = None
        if self.shares_pairs or repulsion:
            pairs = self.pairs(positions, boxes)  # the pair search refuses NaN/inf positions
        elif not bool(torch.isfinite(positions).all()):
            raise ValueError("positions contain NaN or infinite values")
        total = scale * self.interaction_energies(positions, boxes, pairs) + offset
        if pairs is not None and repulsion:
            total = total + self.repulsion_energies(positions.size(0), positions.size(1), pairs)
        return total

    def repulsion_energies(self, frames: int, n_atoms: int,
                           pairs: Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
                           ) -> torch.Tensor:
        """(frames,) core-repulsion energies in kJ/mol (see :meth:`set_repulsion`) of the
        :meth:`pairs` of a batch."""
        first, second, r = pairs[0], pairs[1], pairs[3]
        species = self.species.repeat(frames)
        sigma = self.repulsion_sigma[species[first], species[second]].to(r.dtype)
        active = sigma > 0
        sigma, r, frame = sigma[active], r[active], first[active] // n_atoms
        terms = self.repulsion_epsilon * (sigma / r) ** 12 * smooth_envelope(r / (2.0 * sigma), 1.0)
        return torch.zeros(frames, dtype=r.dtype, device=r.device).index_add(0, frame, terms)

    def forward(self, positions: torch.Tensor, box: Optional[torch.Tensor] = None) -> torch.Tensor:
        boxes: Optional[torch.Tensor] = None
        if box is not None:
            boxes = box.unsqueeze(0)
        return self.energies(positions.unsqueeze(0), boxes)[0]
