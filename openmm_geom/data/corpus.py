"""An offline pretraining corpus of real molecular structures (geom2vec denoising, section II.B).

The paper pretrains on OrbNet Denali (2.3 M conformations); nothing can be downloaded here, so
:func:`build_corpus` assembles what ships with the installed packages and this one:

- ASE's bundled molecule collections (``g2``: 162 small molecules, ``s22``: 22 dimers);
- PDB files inside the openmm wheel: villin headpiece (``test.pdb``, protein atoms only),
  single lipid molecules from seven bilayer patches, small clusters cut from the TIP3P box;
- the bundled ``alanine-dipeptide.pdb`` and ``t4-lysozyme-l99a.pdb``, and any user PDB files;
- snapshots of short OpenMM runs (amber14-all, vacuum, NoCutoff, HBonds constraints,
  Langevin 1/ps, 2 fs) of PDBs the force field can parametrise, at several temperatures.

Large molecules are cropped into fragments: a sphere of whole residues around a centre residue
(residues with any atom within ``fragment_radius_nm`` of the centre residue's heavy-atom
centroid, nearest first, at most ``max_fragment_atoms`` atoms), so graphs stay ~20-150 atoms.
Heavy-atom-only variants (the CV featurizer usually sees heavy atoms) are added per structure.

File format (one ``.npz``, written atomically, loads with ``allow_pickle=False``):

``atomic_numbers`` (total_atoms,) int64; ``positions`` (total_atoms, 3) float32, nm;
``offsets`` (n_structures + 1,) int64, structure ``i`` is atoms ``offsets[i]:offsets[i+1]``;
``group`` (n_structures,) int64 into ``names`` (n_groups,) str; ``heavy_only``
(n_structures,) bool marks heavy-atom variants; ``metadata``: a JSON string
(sources, counts, units ``"nm"``, ``sha256`` of the arrays via
:func:`openmm_geom.modelfile.sha256_of_arrays`).

Groups: every structure of one molecule (its conformations, MD snapshots, heavy-atom variant)
shares a group; protein fragments are grouped by blocks of ``residue_block`` consecutive centre
residues. Validation splits are by group (:meth:`Corpus.split_by_group`), so validation
molecules are unseen in training. (Fragments centred near a block boundary overlap the next
block's fragments a little; that is the only leak, and it concerns protein fragments only.)
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import FileFormatError
from ..io import atomic_savez, format_tag, read_versioned_npz, sha256_of_arrays

__all__ = ["build_corpus", "load_corpus", "Corpus",
           "DEFAULT_MAX_Z", "openmm_data_pdb"]

CORPUS_KIND, CORPUS_VERSION = "corpus", 1
DEFAULT_MAX_Z = 36  # the featurizer's default embedding rows (H..Br)
_REQUIRED = ("atomic_numbers", "positions", "offsets", "group", "names", "metadata")
_SOLVENT = {"HOH", "WAT", "SOL", "TIP3", "NA", "CL", "Na", "Cl", "K", "Na+", "Cl-", "MG", "CA2"}
_LIPID_FILES = ("DLPC", "DLPE", "DMPC", "DOPC", "DPPC", "POPC", "POPE")


def openmm_data_pdb(name: str) -> Path:
    """Path of a PDB file shipped in the openmm wheel (``openmm/app/data``), e.g. ``test.pdb``."""
    import openmm.app

    path = Path(openmm.app.__file__).parent / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"the installed openmm has no {path}")
    return path


# --------------------------------------------------------------------------------------------
# The corpus object


class Corpus:
    """Structures of a corpus file: ragged arrays plus helpers for batching and splitting.

    Attributes
    ----------
    atomic_numbers : (total_atoms,) int64
    positions : (total_atoms, 3) float32, nm
    offsets : (n_structures + 1,) int64
    group : (n_structures,) int64, index into ``names``
    names : list of str, one per group
    heavy_only : (n_structures,) bool, True for the heavy-atom-only variants
    metadata : dict
    path : Path or None
    """

    def __init__(self, atomic_numbers, positions, offsets, group, names, metadata=None,
                 path=None, heavy_only=None):
        self.atomic_numbers = np.asarray(atomic_numbers, dtype=np.int64)
        self.positions = np.asarray(positions, dtype=np.float32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.group = np.asarray(group, dtype=np.int64)
        self.names = [str(n) for n in names]
        self.metadata = dict(metadata or {})
        self.path = None if path is None else Path(path)
        self.heavy_only = (np.zeros(len(self.group), bool) if heavy_only is None
                           else np.asarray(heavy_only, dtype=bool))
        self._check()

    def _check(self):
        where = f" in {self.path}" if self.path else ""
        n_atoms = len(self.atomic_numbers)
        if self.positions.shape != (n_atoms, 3):
            raise FileFormatError(f"positions have shape {self.positions.shape}, expected "
                              f"({n_atoms}, 3){where}")
        o = self.offsets
        if o.ndim != 1 or len(o) < 1 or o[0] != 0 or o[-1] != n_atoms or np.any(np.diff(o) < 1):
            raise FileFormatError(f"offsets must rise strictly from 0 to {n_atoms}{where}")
        if self.group.shape != (len(o) - 1,):
            raise FileFormatError(f"group has {len(self.group)} entries for {len(o) - 1} "
                              f"structures{where}")
        if self.heavy_only.shape != self.group.shape:
            raise FileFormatError(f"heavy_only has {len(self.heavy_only)} entries for "
                              f"{len(self.group)} structures{where}")
        if len(self.group) and (self.group.min() < 0 or self.group.max() >= len(self.names)):
            raise FileFormatError(f"group indices exceed the {len(self.names)} names{where}")
        if n_atoms and (self.atomic_numbers.min() < 1):
            raise FileFormatError(f"atomic numbers must be >= 1{where}")
        if not np.all(np.isfinite(self.positions)):
            raise FileFormatError(f"positions contain NaN or infinite values{where}")

    # -- basic access
    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_structures(self) -> int:
        return len(self)

    @property
    def n_atoms(self) -> int:
        return len(self.atomic_numbers)

    @property
    def n_groups(self) -> int:
        return len(self.names)

    @property
    def sizes(self) -> np.ndarray:
        """Atoms per structure, (n_structures,)."""
        return np.diff(self.offsets)

    @property
    def sha256(self) -> str:
        return sha256_of_arrays(self.atomic_numbers, self.positions, self.offsets, self.group,
                                np.asarray(self.names, dtype=str), self.heavy_only)

    def structure(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(atomic_numbers (n,), positions (n, 3) nm)`` of structure ``i``."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.atomic_numbers[a:b], self.positions[a:b]

    def group_name(self, i: int) -> str:
        return self.names[int(self.group[i])]

    # -- batching
    def size_buckets(self, indices: Optional[Sequence[int]] = None) -> Dict[int, np.ndarray]:
        """Structures grouped by equal atom count: ``{n_atoms: structure indices}``.

        Equal size is not enough to stack frames for :class:`Geom2VecFeaturizer` (it takes one
        atomic-number array per call); :func:`pack_structures` instead lays any structures out
        as one disjoint graph, which is what :mod:`openmm_geom.training.denoising` uses.
        """
        indices = np.arange(len(self)) if indices is None else np.asarray(indices, np.int64)
        sizes = self.sizes[indices]
        return {int(n): indices[sizes == n] for n in np.unique(sizes)}

    def composition_buckets(self, indices: Optional[Sequence[int]] = None
                            ) -> Dict[bytes, np.ndarray]:
        """Structures grouped by identical atomic-number sequence (stackable as (B, N, 3))."""
        indices = np.arange(len(self)) if indices is None else np.asarray(indices, np.int64)
        buckets: Dict[bytes, List[int]] = {}
        for i in indices:
            buckets.setdefault(self.structure(int(i))[0].tobytes(), []).append(int(i))
        return {k: np.asarray(v, np.int64) for k, v in buckets.items()}

    # -- splitting
    def split_by_group(self, validation_fraction: float = 0.1, seed: int = 0
                       ) -> Tuple[np.ndarray, np.ndarray]:
        """(train, validation) structure indices; no group is in both.

        Groups are taken in a seeded random order until the validation set holds at least
        ``validation_fraction`` of the structures (at least one group, and at least one group
        is left for training).
        """
        if not 0.0 < validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must lie in (0, 1), got {validation_fraction}")
        used = np.unique(self.group)
        if len(used) < 2:
            raise ValueError("a split by group needs at least two groups (molecules); this "
                             f"corpus has {len(used)}")
        order = np.random.default_rng([int(seed), 7]).permutation(used)
        counts = np.bincount(self.group, minlength=len(self.names))
        target = validation_fraction * len(self)
        chosen, total = [], 0
        for g in order[:-1]:
            if total >= target:
                break
            chosen.append(g)
            total += counts[g]
        is_val = np.isin(self.group, chosen)
        return np.flatnonzero(~is_val), np.flatnonzero(is_val)

    def summary(self) -> dict:
        sizes = self.sizes
        return {"n_structures": len(self), "n_atoms": self.n_atoms, "n_groups": self.n_groups,
                "atoms_per_structure": {"min": int(sizes.min()), "median": float(np.median(sizes)),
                                        "max": int(sizes.max())},
                "elements": sorted(int(z) for z in np.unique(self.atomic_numbers)),
                "sha256": self.sha256}

    def __repr__(self) -> str:
        return (f"Corpus({len(self)} structures, {self.n_atoms} atoms, {self.n_groups} groups"
                + (f", {self.path}" if self.path else "") + ")")


def pack_structures(positions: Sequence, cutoff_nm: float, margin_nm: float = 0.2):
    """Lay structures out as one disjoint graph: centred, on a cubic grid farther apart than
    the cutoff, so no edge joins two structures and each sees exactly its own atoms.

    Parameters
    ----------
    positions : sequence of (n_i, 3) torch tensors, nm
    cutoff_nm : the featurizer's cutoff

    Returns
    -------
    Tensor (sum n_i, 3): the packed positions (same dtype as the inputs).
    """
    import torch

    centred = [p - p.mean(0, keepdim=True) for p in positions]
    radius = max(float(c.norm(dim=1).max()) for c in centred)
    spacing = 2.0 * radius + float(cutoff_nm) + margin_nm
    k = max(1, math.ceil(len(centred) ** (1.0 / 3.0) - 1e-9))
    while k ** 3 < len(centred):
        k += 1
    slot = torch.arange(len(centred))
    grid = torch.stack((slot % k, (slot // k) % k, slot // (k * k)), 1).to(centred[0].dtype)
    grid = (grid - 0.5 * (k - 1)) * spacing
    return torch.cat([c + grid[j] for j, c in enumerate(centred)], 0)


# --------------------------------------------------------------------------------------------
# Loading


def load_corpus(path) -> Corpus:
    """Read a corpus file written by :func:`build_corpus`.

    Raises
    ------
    FileFormatError
        Missing file, not an npz, missing arrays, inconsistent arrays, or a content hash that
        differs from the one recorded at build time (corruption).
    """
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"corpus file not found: {path}")
    arrays, metadata = read_versioned_npz(path, CORPUS_KIND, (CORPUS_VERSION,), header="metadata",
                                          required=_REQUIRED, what="corpus file")
    heavy_only = arrays.get("heavy_only")
    if metadata.get("units", {}).get("positions") != "nm":
        raise FileFormatError(f"{path}: positions are not recorded in nm")
    corpus = Corpus(arrays["atomic_numbers"], arrays["positions"], arrays["offsets"],
                    arrays["group"], arrays["names"].tolist(), metadata, path, heavy_only)
    if metadata.get("sha256") != corpus.sha256:
        raise FileFormatError(f"{path}: content hash {corpus.sha256} differs from the recorded "
                          f"{metadata.get('sha256')} (corrupt or edited file)")
    return corpus


def _save_corpus(out: Path, z, pos, offsets, group, names, heavy_only, metadata) -> Corpus:
    corpus = Corpus(z, pos, offsets, group, names, metadata, out, heavy_only)
    metadata = dict(metadata, format=format_tag(CORPUS_KIND, CORPUS_VERSION),
                    units={"positions": "nm"}, sha256=corpus.sha256,
                    n_structures=len(corpus), n_atoms=corpus.n_atoms, n_groups=corpus.n_groups)
    corpus.metadata = metadata
    atomic_savez(out, compressed=True, atomic_numbers=corpus.atomic_numbers,
                 positions=corpus.positions, offsets=corpus.offsets, group=corpus.group,
                 names=np.asarray(corpus.names, dtype=str), heavy_only=corpus.heavy_only,
                 metadata=np.asarray(json.dumps(metadata, sort_keys=True)))
    return corpus


# --------------------------------------------------------------------------------------------
# Building


class _Builder:
    def __init__(self, heavy_atom_variants: bool, max_z: int):
        self.z: List[np.ndarray] = []
        self.pos: List[np.ndarray] = []
        self.group: List[int] = []
        self.heavy_only: List[bool] = []
        self.names: List[str] = []
        self._group_index: Dict[str, int] = {}
        self.heavy = heavy_atom_variants
        self.max_z = max_z
        self.counts: Dict[str, int] = {}
        self.skipped: List[str] = []

    def add(self, source: str, group: str, z, pos_nm) -> None:
        z = np.asarray(z, np.int64)
        pos = np.asarray(pos_nm, np.float64)
        if len(z) < 2:
            return  # a lone atom has no geometry to denoise
        if z.min() < 1 or z.max() >= self.max_z:
            self.skipped.append(f"{group}: atomic numbers outside 1..{self.max_z - 1}")
            return
        if group not in self._group_index:
            self._group_index[group] = len(self.names)
            self.names.append(group)
        g = self._group_index[group]
        variants = [(z, pos, False)]
        heavy = z != 1
        if self.heavy and heavy.sum() >= 2 and not heavy.all():
            variants.append((z[heavy], pos[heavy], True))
        for zz, pp, only in variants:
            self.z.append(zz)
            self.pos.append(pp.astype(np.float32))
            self.group.append(g)
            self.heavy_only.append(only)
            self.counts[source] = self.counts.get(source, 0) + 1

    def arrays(self):
        if not self.z:
            raise ValueError("the corpus is empty: no source produced a structure")
        sizes = [len(z) for z in self.z]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return (np.concatenate(self.z), np.concatenate(self.pos), offsets,
                np.asarray(self.group, np.int64), list(self.names),
                np.asarray(self.heavy_only, bool))


def _ase_molecules(collections) -> Iterable[Tuple[str, str, np.ndarray, np.ndarray]]:
    """(collection, name, atomic numbers, positions nm) of ASE's bundled collections."""
    import ase.collections

    if isinstance(collections, Mapping):
        items = list(collections.items())
    else:
        items = [(c, None) for c in collections]
    for collection, wanted in items:
        try:
            coll = getattr(ase.collections, collection)
        except AttributeError:
            raise ValueError(f"ASE has no bundled collection {collection!r}") from None
        names = list(coll.names) if wanted is None else list(wanted)
        for name in names:
            atoms = coll[name]
            if atoms.pbc.any():
                continue  # crystals (e.g. dcdft) are not molecules
            yield collection, name, atoms.numbers.copy(), atoms.positions / 10.0


class _PDB:
    """Protein/solute atoms of a PDB: elements, residues, positions (nm)."""

    def __init__(self, path, keep_solvent: bool = False):
        import openmm.app as app

        pdb = app.PDBFile(str(path))
        self.path = Path(path)
        self.topology = pdb.topology
        atoms = list(pdb.topology.atoms())
        self.positions_all = np.asarray(pdb.getPositions(asNumpy=True)._value, np.float64)
        keep = [a.index for a in atoms if keep_solvent or a.residue.name not in _SOLVENT]
        missing = [a.name for a in atoms if a.element is None]
        if missing:
            raise ValueError(f"{path}: atoms without an element (virtual sites?): {missing[:5]}")
        self.index = np.asarray(keep, np.int64)
        self.z = np.asarray([atoms[i].element.atomic_number for i in keep], np.int64)
        residues = [atoms[i].residue.index for i in keep]
        _, self.residue = np.unique(residues, return_inverse=True)
        self.positions = self.positions_all[self.index]

    @property
    def n_residues(self) -> int:
        return int(self.residue.max()) + 1 if len(self.residue) else 0


def _fragments(z, pos, residue, centres, radius, max_atoms) -> Iterable[Tuple[int, np.ndarray]]:
    """Whole-residue spheres: (centre residue, atom indices) for each centre residue."""
    n_res = int(residue.max()) + 1
    members = [np.flatnonzero(residue == r) for r in range(n_res)]
    for c in centres:
        atoms_c = members[c]
        heavy_c = atoms_c[z[atoms_c] != 1]
        centre = pos[heavy_c if len(heavy_c) else atoms_c].mean(0)
        d = np.linalg.norm(pos - centre, axis=1)
        res_dist = np.full(n_res, np.inf)
        np.minimum.at(res_dist, residue, d)
        res_dist[c] = -1.0
        chosen, total = [], 0
        for r in np.argsort(res_dist, kind="stable"):
            if res_dist[r] > radius or total + len(members[r]) > max_atoms and chosen:
                break
            chosen.append(r)
            total += len(members[r])
        yield int(c), np.sort(np.concatenate([members[r] for r in chosen]))


def _add_pdb(builder: _Builder, source: str, label: str, pdb: _PDB, positions, *,
             radius: float, max_atoms: int, block: int, centres=None) -> None:
    """A whole molecule if small enough, else residue-sphere fragments grouped by blocks."""
    if len(pdb.z) <= max_atoms:
        builder.add(source, label, pdb.z, positions)
        return
    if centres is None:
        centres = range(pdb.n_residues)
    for c, atoms in _fragments(pdb.z, positions, pdb.residue, centres, radius, max_atoms):
        lo = (c // block) * block
        builder.add(source, f"{label}:res{lo + 1}-{lo + block}", pdb.z[atoms], positions[atoms])


def _simulate(path, temperatures, picoseconds, interval_ps, seed, threads, equilibration_ps):
    """Snapshots (frames, n_solute, 3) nm of vacuum amber14 runs at each temperature."""
    import openmm
    import openmm.app as app
    import openmm.unit as unit

    pdb = app.PDBFile(str(path))
    modeller = app.Modeller(pdb.topology, pdb.positions)
    modeller.delete([r for r in modeller.topology.residues() if r.name in _SOLVENT])
    forcefield = app.ForceField("amber14-all.xml")
    system = forcefield.createSystem(modeller.topology, nonbondedMethod=app.NoCutoff,
                                     constraints=app.HBonds)
    step_ps = 0.002
    every = max(1, int(round(interval_ps / step_ps)))
    n_frames = max(1, int(round(picoseconds / interval_ps)))
    platform = openmm.Platform.getPlatformByName("CPU")
    properties = {"Threads": str(int(threads))} if threads else {}
    frames = []
    for k, temperature in enumerate(temperatures):
        integrator = openmm.LangevinMiddleIntegrator(temperature * unit.kelvin,
                                                     1.0 / unit.picosecond,
                                                     step_ps * unit.picoseconds)
        run_seed = int(np.random.SeedSequence([int(seed), k, 11]).generate_state(1)[0]
                       % 2_000_000_000) + 1
        integrator.setRandomNumberSeed(run_seed)
        context = openmm.Context(system, integrator, platform, properties)
        context.setPositions(modeller.positions)
        openmm.LocalEnergyMinimizer.minimize(context, 10.0, 500)
        context.setVelocitiesToTemperature(temperature * unit.kelvin, run_seed)
        integrator.step(int(round(equilibration_ps / step_ps)))
        for _ in range(n_frames):
            integrator.step(every)
            state = context.getState(getPositions=True)
            frames.append((float(temperature),
                           np.asarray(state.getPositions(asNumpy=True)._value, np.float64)))
        del context, integrator
    return modeller.topology, frames


def build_corpus(out, *, ase_collections: Union[Sequence[str], Mapping[str, Sequence[str]]]
                 = ("g2", "s22"),
                 pdbs: Sequence = (), include_bundled: bool = True,
                 include_openmm_data: bool = True, md_pdbs: Optional[Sequence] = None,
                 md_picoseconds: float = 5.0,
                 md_temperatures: Sequence[float] = (300.0, 450.0, 600.0),
                 md_interval_ps: float = 0.1, md_equilibration_ps: float = 1.0,
                 fragments_per_frame: int = 4, fragment_radius_nm: float = 0.8,
                 max_fragment_atoms: int = 150, residue_block: int = 10,
                 lipids_per_type: int = 8, water_clusters: int = 8,
                 water_radius_nm: float = 0.6, heavy_atom_variants: bool = True,
                 max_z: int = DEFAULT_MAX_Z, seed: int = 0, threads: Optional[int] = None,
                 progress: bool = True) -> dict:
    """Build the pretraining corpus and write it to ``out`` (npz, atomic).

    Parameters
    ----------
    out : path of the ``.npz`` to write
    ase_collections : ASE collection names (``"g2"``, ``"s22"``), or a mapping
        ``{collection: [molecule names]}`` for a subset
    pdbs : extra user PDB files (static structures; solvent and ions dropped; cropped into
        fragments when larger than ``max_fragment_atoms``)
    include_bundled : the bundled alanine dipeptide and T4 lysozyme L99A
    include_openmm_data : villin (openmm's ``test.pdb``), single lipids and TIP3P clusters
    md_pdbs : PDBs to simulate; ``None`` means alanine dipeptide and villin (if
        ``include_bundled`` / ``include_openmm_data``); ``()`` for no MD
    md_picoseconds : production length per temperature (ps), after ``md_equilibration_ps``
    md_temperatures : K; md_interval_ps : ps between snapshots
    fragments_per_frame : random fragment centres per snapshot of a molecule too big to keep
    fragment_radius_nm, max_fragment_atoms, residue_block : cropping and grouping of fragments
    lipids_per_type, water_clusters, water_radius_nm : how much of openmm's lipid/water boxes
    heavy_atom_variants : also store each structure without hydrogens
    max_z : structures with atomic numbers >= max_z are skipped (the featurizer cannot embed them)
    seed : seeds the MD, fragment and lipid/water choices
    threads : OpenMM CPU threads for the MD (None: OpenMM's default)

    Returns
    -------
    dict: path, sha256, n_structures, n_atoms, n_groups, structures per source, skipped,
    seconds.
    """
    from ..progress import progress_bar
    from . import bundled

    start = time.perf_counter()
    out = Path(out)
    rng = np.random.default_rng([int(seed), 3])
    builder = _Builder(heavy_atom_variants, max_z)
    crop = dict(radius=fragment_radius_nm, max_atoms=max_fragment_atoms, block=residue_block)
    sources = []

    static: List[Tuple[str, str, Path]] = []  # (source, label, path)
    if include_bundled:
        static += [("bundled", "alanine-dipeptide", bundled("alanine-dipeptide.pdb")),
                   ("bundled", "t4-lysozyme-l99a", bundled("t4-lysozyme-l99a.pdb"))]
    if include_openmm_data:
        static.append(("openmm-data", "villin", openmm_data_pdb("test.pdb")))
    for p in pdbs:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"PDB file not found: {p}")
        static.append(("user-pdb", p.stem, p))
    labels = {}
    for _, label, path in static:
        labels[str(Path(path).resolve())] = label

    if md_pdbs is None:
        md_pdbs = []
        if include_bundled:
            md_pdbs.append(bundled("alanine-dipeptide.pdb"))
        if include_openmm_data:
            md_pdbs.append(openmm_data_pdb("test.pdb"))
    md_pdbs = [Path(p) for p in md_pdbs]
    n_steps = (1 if ase_collections else 0) + len(static) + len(md_pdbs) \
        + (1 if include_openmm_data else 0)
    bar = progress_bar(n_steps, "building corpus", enabled=progress, unit="source")

    if ase_collections:
        n = 0
        for collection, name, z, pos in _ase_molecules(ase_collections):
            builder.add(f"ase:{collection}", f"{collection}:{name}", z, pos)
            n += 1
        sources.append({"source": "ase", "collections": list(ase_collections), "molecules": n})
        bar.update(1)

    for source, label, path in static:
        pdb = _PDB(path)
        _add_pdb(builder, source, label, pdb, pdb.positions, **crop)
        sources.append({"source": source, "file": str(path), "label": label,
                        "atoms": int(len(pdb.z)), "residues": pdb.n_residues})
        bar.update(1)

    if include_openmm_data:
        for lipid in _LIPID_FILES:
            pdb = _PDB(openmm_data_pdb(f"{lipid}.pdb"))
            n_res = pdb.n_residues
            picks = rng.choice(n_res, size=min(lipids_per_type, n_res), replace=False)
            for r in np.sort(picks):
                atoms = np.flatnonzero(pdb.residue == r)
                builder.add("openmm-data:lipids", f"lipid:{lipid}", pdb.z[atoms],
                            pdb.positions[atoms])
        water = _PDB(openmm_data_pdb("tip3p.pdb"), keep_solvent=True)
        oxygens = np.flatnonzero(water.z == 8)
        box = np.asarray(water.topology.getPeriodicBoxVectors()._value, np.float64).diagonal()
        inner = oxygens[np.all(np.abs(water.positions[oxygens] - box / 2) < box / 2 - 0.7, 1)]
        for o in rng.choice(inner, size=min(water_clusters, len(inner)), replace=False):
            d = np.linalg.norm(water.positions[oxygens] - water.positions[o], axis=1)
            mols = water.residue[oxygens[d <= water_radius_nm]]
            atoms = np.flatnonzero(np.isin(water.residue, mols))
            builder.add("openmm-data:water", "water:tip3p", water.z[atoms],
                        water.positions[atoms])
        sources.append({"source": "openmm-data", "lipids": list(_LIPID_FILES),
                        "lipids_per_type": lipids_per_type, "water_clusters": water_clusters})
        bar.update(1)

    for k, path in enumerate(md_pdbs):
        label = labels.get(str(path.resolve()), path.stem)
        try:
            topology, frames = _simulate(path, md_temperatures, md_picoseconds, md_interval_ps,
                                         int(seed) * 1000 + k, threads, md_equilibration_ps)
        except Exception as error:  # the force field cannot parametrise it: skip, say so
            message = f"MD of {path} skipped: {type(error).__name__}: {str(error)[:200]}"
            warnings.warn(message)
            builder.skipped.append(message)
            bar.update(1)
            continue
        z = np.asarray([a.element.atomic_number for a in topology.atoms()], np.int64)
        residue = np.unique([a.residue.index for a in topology.atoms()], return_inverse=True)[1]
        top = SimpleNamespace(z=z, residue=residue, n_residues=int(residue.max()) + 1)
        for temperature, frame in frames:
            centres = None
            if len(z) > max_fragment_atoms:
                centres = rng.choice(top.n_residues, size=min(fragments_per_frame,
                                                              top.n_residues), replace=False)
            _add_pdb(builder, "md", label, top, frame, centres=centres, **crop)
        sources.append({"source": "md", "file": str(path), "label": label,
                        "force_field": "amber14-all.xml", "nonbonded": "NoCutoff (vacuum)",
                        "constraints": "HBonds", "timestep_ps": 0.002, "friction_per_ps": 1.0,
                        "temperatures_K": [float(t) for t in md_temperatures],
                        "picoseconds": float(md_picoseconds),
                        "equilibration_ps": float(md_equilibration_ps),
                        "interval_ps": float(md_interval_ps), "frames": len(frames)})
        bar.update(1)
    bar.close()

    z, pos, offsets, group, names, heavy_only = builder.arrays()
    metadata = {"sources": sources, "structures_per_source": builder.counts,
                "skipped": builder.skipped, "heavy_atom_variants": bool(heavy_atom_variants),
                "fragment_radius_nm": fragment_radius_nm,
                "max_fragment_atoms": max_fragment_atoms, "residue_block": residue_block,
                "max_z": max_z, "seed": int(seed)}
    corpus = _save_corpus(out, z, pos, offsets, group, names, heavy_only, metadata)
    summary = {"path": str(out), "seconds": round(time.perf_counter() - start, 2),
               "structures_per_source": builder.counts, "skipped": builder.skipped}
    summary.update(corpus.summary())
    return summary
