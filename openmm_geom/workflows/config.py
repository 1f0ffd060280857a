"""The settings of the jobs, importable without torch or OpenMM.

Each settings class (and each named instance of one) is defined here once and re-exported by
the workflow module that runs it: :class:`CGSettings` (:mod:`.coarse_grain`),
:class:`PotentialSettings` (:mod:`.potential`), :class:`VampSettings`,
:class:`ReproduceSettings`, :class:`ExploreSettings` (:mod:`.cv`), :class:`BiasSettings`
(:mod:`.cv_bias`) and :data:`GENE_PRODUCTION` (:mod:`.signature`). The command line reads
their fields to build its options (``openmm-geom ... --help`` loads neither torch nor OpenMM).

Every class checks its fields when it is made (:func:`openmm_geom.settings.check_settings`):
temperatures and time steps positive, frictions non-negative, counts at least one, so that a
bad value is refused before any file is written. Units: lengths nm, times fs or ps as the
field's name says, temperatures K, energies kJ/mol.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from ..models.names import ARCHITECTURES, MIXER_NAMES
from ..settings import check_settings, override, setting
from ..training.config import EnergyForceConfig, TrainConfig, TrainingSettings, VAMPNetTrainer

__all__ = ["CGSettings", "PRODUCTION", "QUICK", "PotentialSettings", "budget", "SIZES",
           "MODEL_SIZES", "PARETO_GRID", "VampSettings",
           "DEFAULT_VAMP_TRAINER", "ReproduceSettings", "QUICK_REPRODUCE", "ExploreSettings",
           "QUICK_EXPLORE", "BiasSettings", "BIAS_METHODS", "GENE_PRODUCTION"]


# ------------------------------------------------------------------------ coarse graining
@dataclasses.dataclass
class CGSettings:
    """Everything the CG job needs besides data. Lengths nm, time fs/ps, energies kJ/mol.

    ``stage`` in each field's metadata names the command that uses it (``cg train``,
    ``simulate``, ``evaluate``; ``reproduce`` uses them all).
    """

    # model
    features: int = setting(32, help="CGSchNet feature channels", stage="train", check="count")
    filters: int = setting(32, help="continuous-filter channels", stage="train", check="count")
    interactions: int = setting(2, help="interaction blocks", stage="train", check="count")
    n_rbf: int = setting(16, help="radial basis functions", stage="train", check="count")
    output_hidden: int = setting(16, help="hidden units of the energy output network",
                                 stage="train", check="count")
    cutoff_nm: float = setting(1.0, help="interaction cutoff, nm", stage="train",
                               check="positive")
    dtype: str = setting("float32", help="model precision", choices=("float32", "float64"),
                         stage="train")
    # force map: "optimized" aggregates unmapped atoms' forces with minimal variance (same
    # mean force; 8x lower force-matching noise on capped alanine) or "slice" (the paper's)
    force_map: str = setting("optimized", help="minimal-variance force aggregation or the "
                             "paper's slice", choices=("optimized", "slice"), stage="train")
    # priors
    prior_method: str = setting("cgnet", help="prior fit: k = kT/Var (cgnet) or Boltzmann "
                                "inversion", choices=("cgnet", "boltzmann"), stage="train")
    dihedral_harmonics: int = setting(3, help="Fourier terms of the dihedral priors",
                                      stage="train", check="count")
    # training (small batches: force-matching gradients are noisy, and more optimizer steps
    # per epoch lowered the validation loss more than a larger network did, at less cost);
    # the seed is set per run
    training: TrainConfig = setting(
        TrainConfig(epochs=30, batch_size=64, learning_rate=3e-3, final_learning_rate=1e-4,
                    patience=5, folds=5, max_train_frames=40_000),
        help="force-matching training of the k-fold ensemble", stage="train")
    # torch.compile (inductor, C++ on CPU), opt-in: the simulator's force function; measured
    # in benchmarks/bench_compile.py. Training is not compiled: see docs/benchmarks.md.
    compile: bool = setting(False, help="torch.compile the model (inductor): the simulator's "
                            "force function; the first step compiles (tens of seconds, minutes "
                            "on a busy machine; logged)", stage="simulate")
    # simulation: 100 replicas x 100 ps (10 ns in all; each replica crosses between the
    # C7eq and C5 basins ~10 times per 40 ps, so the replicas forget where they started)
    replicas: int = setting(100, help="independent replicas simulated as one batch",
                            stage="simulate", check="count")
    replica_chunks: int = setting(1, help="split the replicas into this many batches, each "
                                  "with its own seed (seed + k) and one task on --cluster; the "
                                  "merged trajectory has the layout of one batch's",
                                  stage="simulate", check="count")
    steps: int = setting(50_000, help="integration steps per replica", stage="simulate",
                         check="non-negative")
    timestep_fs: float = setting(2.0, help="integration time step, fs", stage="simulate",
                                 check="positive")
    friction_per_ps: float = setting(1.0, help="Langevin friction, 1/ps", stage="simulate",
                                     check="non-negative")
    save_interval: int = setting(250, help="steps between saved frames", stage="simulate",
                                 check="count")
    integrator: str = setting("baoab", help="Langevin integrator",
                              choices=("baoab", "overdamped"), stage="simulate")
    # evaluation
    noise_seeds: int = setting(50, help="noisy copies of the reference for the sigma "
                               "calibration curve", stage="evaluate", check="count")
    equilibration_fraction: float = setting(0.1, help="fraction of each CG run discarded, "
                                            "0 to 1", stage="evaluate", check="non-negative")
    tica_lag_frames: int = setting(10, help="proteins: TICA lag in reference frames",
                                   stage="evaluate", check="count")

    def __post_init__(self):
        check_settings(self)
        if not self.equilibration_fraction < 1:
            raise ValueError(f"equilibration_fraction must be below 1, got "
                             f"{self.equilibration_fraction!r}")


#: The documented production setting of ``openmm-geom cg reproduce`` (under 60 min, 2 cores).
PRODUCTION = CGSettings()
#: A few-minute setting for the demo and the tests.
QUICK = override(PRODUCTION, folds=2, epochs=2, batch_size=256, max_train_frames=4000,
                 replicas=16, steps=4000, save_interval=50, noise_seeds=3)


# ---------------------------------------------------------------------- ML potentials
@dataclasses.dataclass
class PotentialSettings:
    """Model sizes, training budget and simulation lengths of the potential job (nm, ps, K).

    ``stage`` in each field's metadata names the command that uses it (``potential train``,
    ``simulate``; ``reproduce`` uses them all).
    """

    architecture: str = setting("attention", help="attention, et or tensornet (the CLI's "
                                "--model)", cli=False,
                                choices=ARCHITECTURES)
    cutoff_nm: float = setting(0.5, help="interaction cutoff, nm", stage="train",
                               check="positive")
    # attention model (the thesis' reference: 4 layers of 48 channels, 4 heads)
    features: int = setting(48, help="attention: channels per atom", stage="train",
                            check="count")
    layers: int = setting(4, help="attention: message-passing layers", stage="train",
                          check="count")
    heads: int = setting(4, help="attention: heads per layer", stage="train", check="count")
    n_rbf: int = setting(32, help="attention: radial basis functions", stage="train",
                         check="count")
    # direction-carrying vector channels; 0 is the distance-only model of the first results
    # (test force MAE 98 kJ/mol/nm on water against ET's 31): 8 channels learned much faster
    # on the same data and budget (docs/results/potentials.md)
    vector_features: int = setting(8, help="attention: equivariant vector channels per atom "
                                   "(0: none, distances only)", stage="train",
                                   check="non-negative")
    angular_logits: bool = setting(True, help="attention with vector channels: attention "
                                   "logits also see directions", stage="train")
    vector_scale: float = setting(0.125, help="attention with vector channels: factor of the "
                                  "summed vector messages", stage="train", check="positive")
    summed_messages: bool = setting(False, help="attention: also sum the scalar messages "
                                    "(keeps the neighbour count the softmax divides out)",
                                    stage="train")
    # TorchMD-Net models: ET with 32 channels and 2 layers has 41k parameters, comparable to
    # the attention model's 64k (52k without vector channels)
    hidden_channels: int = setting(32, help="TorchMD-Net: hidden channels", stage="train",
                                   check="count")
    num_layers: int = setting(2, help="TorchMD-Net: interaction layers", stage="train",
                              check="count")
    num_rbf: int = setting(32, help="TorchMD-Net: radial basis functions", stage="train",
                           check="count")
    dtype: str = setting("float32", help="model precision", choices=("float32", "float64"),
                         stage="train")
    # training: the documented budget is 12 epochs of 400 frames (a random stride through
    # the training block each epoch), batches of 4: 1,200 optimiser steps for every
    # architecture, so that they are compared at equal data and steps. Forces only by
    # default (rho 0): an energy term (rho 0.05 or 0.01) pulled the network's collective
    # energy around and left the force error higher (water, 60 frames x 6 epochs: validation
    # force MAE 585 and 419 vs 264 kJ/mol/nm). The energy is then set by the offsets'
    # least-squares refit after training. The seed is set per run.
    training: EnergyForceConfig = setting(
        EnergyForceConfig(epochs=12, batch_size=4, lr_min=1e-4, lr_max=1e-3, lr_final=1e-5,
                          rho=0.0, loss="logcosh", logcosh_alpha=1.0, patience=6,
                          max_train_frames=400),
        help="energy+force training", stage="train")
    validation_fraction: float = setting(0.1, help="fraction of the frames for validation, "
                                         "a time block", stage="train", check="positive")
    test_fraction: float = setting(0.1, help="fraction of the frames held out for the "
                                   "test, the last time block", stage="train", check="positive")
    gap_frames: int = setting(5, help="frames left out between the blocks", stage="train",
                              check="non-negative")
    # simulation (flexible water: 0.5 fs resolves the O-H stretch)
    timestep_fs: float = setting(0.5, help="integration time step, fs", stage="simulate",
                                 check="positive")
    temperature_K: float = setting(300.0, help="temperature, K", stage="simulate",
                                   check="positive")
    friction_per_ps: float = setting(1.0, help="Langevin friction, 1/ps", stage="simulate",
                                     check="non-negative")
    nvt_ps: float = setting(5.0, help="NVT production length, ps", stage="simulate",
                            check="positive")
    equilibration_ps: float = setting(0.5, help="NVT equilibration before it, ps",
                                      stage="simulate", check="non-negative")
    nve_ps: float = setting(1.0, help="NVE length, ps", stage="simulate", check="positive")
    report_interval: int = setting(100, help="steps between saved frames", stage="simulate",
                                   check="count")
    rdf_bins: int = setting(100, help="bins of the radial distribution functions",
                            stage="evaluate", check="count")

    def __post_init__(self):
        check_settings(self)
        if not self.validation_fraction + self.test_fraction < 1:
            raise ValueError("validation_fraction + test_fraction must be below 1, got "
                             f"{self.validation_fraction} + {self.test_fraction}")

    def model_options(self, seed: int) -> dict:
        """The architecture's constructor arguments (sizes, cutoff nm, torch dtype, seed)."""
        import torch

        if self.architecture == "attention":
            sizes = dict(features=self.features, layers=self.layers, heads=self.heads,
                         n_rbf=self.n_rbf)
            if self.summed_messages:
                sizes["summed_messages"] = True
            if self.vector_features > 0:
                sizes.update(vector_features=self.vector_features,
                             angular_logits=self.angular_logits, vector_scale=self.vector_scale)
        else:
            sizes = dict(hidden_channels=self.hidden_channels, num_layers=self.num_layers,
                         num_rbf=self.num_rbf)
        return dict(sizes, cutoff=self.cutoff_nm, dtype=getattr(torch, self.dtype), seed=seed)


#: Model sizes of ``--size``: changes to the production settings per architecture. "medium"
#: is the production default of each; the attention sizes bracket it in channels and layers,
#: the TorchMD-Net sizes in hidden channels and interaction layers. Training budget, cutoff and
#: radial basis are the same at every size.
SIZES = ("small", "medium", "large")
MODEL_SIZES = {
    "attention": {"small": dict(features=32, layers=2, heads=2, vector_features=4),
                  "medium": {},
                  "large": dict(features=64, layers=4, heads=4, vector_features=16)},
    "et": {"small": dict(hidden_channels=16, num_layers=1),
           "medium": {},
           "large": dict(hidden_channels=64, num_layers=3)},
    "tensornet": {"small": dict(hidden_channels=16, num_layers=1),
                  "medium": {},
                  "large": dict(hidden_channels=64, num_layers=3)},
}

#: (architecture, size) pairs that ``potential pareto`` trains and times by default: attention
#: and ET at every size, TensorNet at the medium one.
PARETO_GRID = (("attention", "small"), ("attention", "medium"), ("attention", "large"),
               ("et", "small"), ("et", "medium"), ("et", "large"), ("tensornet", "medium"))


def budget(name: str, architecture: str, size: str = "medium") -> PotentialSettings:
    """Named settings: ``"production"`` (documented reproduction budget) or ``"quick"`` (tests),
    with the model of ``size`` (:data:`SIZES`; the quick budget's tiny model replaces it)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: one of {', '.join(SIZES)}")
    production = override(PotentialSettings(architecture=architecture),
                          **MODEL_SIZES[architecture][size])
    if name == "production":
        return production
    if name == "quick":
        return override(production, features=16, layers=2, heads=2, hidden_channels=16,
                        vector_features=min(production.vector_features, 4),
                        num_layers=1, num_rbf=8, epochs=2, batch_size=4, max_train_frames=16,
                        patience=2, nvt_ps=0.05, equilibration_ps=0.01, nve_ps=0.05,
                        report_interval=10, rdf_bins=40)
    raise ValueError(f"unknown budget {name!r}: 'production' or 'quick'")


# ------------------------------------------------------------------------ geom2vec CVs
# Table S2's AdamW lr 2e-4 and patience 10/2 were set for 5,000-frame batches of large
# proteins; on capped alanine 1e-3 with longer patience reached the same score sooner.
DEFAULT_VAMP_TRAINER = VAMPNetTrainer(lr=1e-3, train_patience=50, validation_patience=10)


@dataclasses.dataclass
class VampSettings:
    """A VAMPnet on token features: the model (mixer, head) and how it is trained."""

    k: int = setting(2, help="number of CVs, the VAMPnet's outputs", check="count")
    lag_ps: float = setting(2.0, help="lag time, ps: a multiple of the frame spacing",
                            check="positive")
    mixer: str = setting("subformer", help="token mixer", choices=MIXER_NAMES)
    mixer_options: dict = setting({}, help="keyword arguments of the mixer")
    hidden: int = setting(128, help="hidden units of the head", check="count")
    layers: int = setting(2, help="layers of the head", check="count")
    dropout: float = setting(0.0, help="dropout of the head, 0 to 1", check="non-negative")
    trainer: VAMPNetTrainer = setting(DEFAULT_VAMP_TRAINER, help="VAMPnet optimisation")

    def __post_init__(self):
        check_settings(self)


@dataclasses.dataclass
class ReproduceSettings:
    """`cv reproduce` on capped alanine (defaults: the measured production run)."""

    stride: int = setting(1, help="keep every n-th frame of the trajectories", check="count")
    train_frames: Optional[int] = setting(None, help="training frames, the first n; none: all",
                                          check="count")
    validation_frames: Optional[int] = setting(50_000, help="validation frames, the first n of "
                                               "the validation run; none: all", check="count")
    selection: str = setting("heavy", help="atoms featurized: heavy | solute | all | any "
                             "mdtraj selection")
    tokens: str = setting("atom", help="one token per atom or per residue",
                          choices=("residue", "atom"))
    global_atoms: Optional[str] = setting("not element H", help="mdtraj selection whose "
                                          "distances form a global token; none: no token")
    backbone: dict = setting({"architecture": "et", "cutoff": 0.5, "hidden_channels": 64,
                              "num_layers": 3, "num_rbf": 32, "num_heads": 8},
                             help="hyper-parameters of the pretrained backbone")
    pretrain_epochs: int = setting(4, help="denoising pretraining epochs", check="count")
    pretrain_max_minutes: Optional[float] = setting(25.0, help="pretraining time budget, "
                                                    "minutes; none: no limit", check="positive")
    corpus: dict = setting({}, help="options of the pretraining corpus (build_corpus)")
    jitter_nm: float = setting(0.0, help="standard deviation of Gaussian noise added to the "
                               "training frames' positions, nm: an augmentation that keeps the "
                               "CVs smooth (biasable); 0: none", check="non-negative")
    jitter_copies: int = setting(4, help="noisy copies of the training frames (with jitter_nm)",
                                 check="count")
    vamp: VampSettings = setting(VampSettings(mixer="pool"), help="the VAMPnet: model, lag and "
                                 "training")

    def __post_init__(self):
        check_settings(self)


QUICK_REPRODUCE = ReproduceSettings(
    validation_frames=None,
    backbone={"architecture": "et", "cutoff": 0.5, "hidden_channels": 16, "num_layers": 1,
              "num_rbf": 8, "num_heads": 2},
    pretrain_epochs=1, pretrain_max_minutes=2.0,
    corpus={"ase_collections": {"g2": ["CH4", "H2O", "NH3", "C2H6", "CH3OH"]},
            "include_openmm_data": False, "include_bundled": False, "md_pdbs": [],
            "heavy_atom_variants": False,
            "fragments_per_frame": 1},
    vamp=VampSettings(lag_ps=2.0, mixer="pool", hidden=16, trainer=dataclasses.replace(
        DEFAULT_VAMP_TRAINER, batch_size=64, max_epochs=2, validation_interval=2)))


@dataclasses.dataclass
class ExploreSettings:
    """`cv explore`: learn CVs from hot unbiased runs (defaults: the measured alanine run).

    When the rare event is absent from data at the temperature of interest (capped alanine's
    phi > 0 basin at 300 K), a VAMPnet trained on them cannot know it. At a higher temperature
    the same unbiased dynamics cross the barrier; the slowest process there is the rare event,
    and the CVs learned from it can then bias the cold system.
    """

    temperature_K: float = setting(700.0, help="temperature of the hot runs, K",
                                   check="positive")
    nanoseconds: float = setting(5.0, help="length of each of the two runs, ns",
                                 check="positive")
    save_interval_ps: float = setting(1.0, help="time between saved frames, ps",
                                      check="positive")
    timestep_fs: float = setting(1.0, help="integration time step, fs", check="positive")
    constraints: Optional[str] = setting("HBonds", help="OpenMM constraints: HBonds, "
                                         "AllBonds, HAngles or none")
    equilibration_ps: float = setting(100.0, help="equilibration before saving, ps",
                                      check="non-negative")
    learn: ReproduceSettings = setting(
        ReproduceSettings(validation_frames=None, jitter_nm=0.005, jitter_copies=4,
                          vamp=VampSettings(k=1, lag_ps=10.0, mixer="pool")),
        help="learning the CVs from the two runs (as cv reproduce)")

    def __post_init__(self):
        check_settings(self)


def _quick_explore() -> ExploreSettings:
    learn = ExploreSettings().learn
    return ExploreSettings(learn=override(QUICK_REPRODUCE, lag_ps=learn.vamp.lag_ps, k=learn.vamp.k,
                                          validation_frames=learn.validation_frames,
                                          jitter_nm=learn.jitter_nm,
                                          jitter_copies=learn.jitter_copies))


#: ``cv explore --quick``: the hot runs of :class:`ExploreSettings`, learning with the tiny
#: :data:`QUICK_REPRODUCE` settings at the explore lag.
QUICK_EXPLORE = _quick_explore()


#: ``BiasSettings.method``: what biases a ``cv bias`` run.
BIAS_METHODS = ("metad", "opes", "app-metad")


@dataclasses.dataclass
class BiasSettings:
    """A biased (or unbiased) run of a peptide in vacuum (amber14, HBonds constraints)."""

    picoseconds: float = setting(100.0, help="length of the run, ps", check="positive")
    timestep_fs: float = setting(2.0, help="integration time step, fs", check="positive")
    temperature_K: float = setting(300.0, help="temperature, K", check="positive")
    friction_per_ps: float = setting(1.0, help="Langevin friction, 1/ps", check="non-negative")
    bias_factor: float = setting(8.0, help="metad, app-metad: well-tempered bias factor "
                                 "(> 1)", check="positive")
    height_kJmol: float = setting(1.2, help="metad, app-metad: initial hill height, "
                                 "kJ/mol", check="positive")
    deposit_ps: float = setting(0.5, help="metad, app-metad: time between hills, ps",
                                check="positive")
    log_ps: float = setting(0.1, help="time between logged frames, ps", check="positive")
    checkpoint_ps: float = setting(10.0, help="time between checkpoints, ps", check="positive")
    # learned CVs: hill width = this fraction of the CV's standard deviation on training data
    width_fraction: float = setting(0.2, help="learned CVs: hill width / the CV's standard "
                                    "deviation on its training data", check="positive")
    phipsi_width: float = setting(0.35, help="phipsi mode: hill width, rad", check="positive")
    # learned CVs extrapolate outside their training data; a bias that pushes them there can
    # tear the molecule apart (docs/results/cv-biasing.md), hence optional walls
    cv_walls_kJmol: Optional[float] = setting(
        None, help="learned CVs: harmonic walls at the CVs' training range (min and max), "
        "W ((s - edge)/std)^2 kJ/mol beyond an edge (std: the CV's training standard "
        "deviation); none: no walls", check="positive")
    method: str = setting("metad", help="metad: well-tempered metadynamics (TorchCVForce); "
                          "opes: OPES (TorchCVForce); app-metad: OpenMM's own "
                          "openmm.app.Metadynamics on CustomTorsionForce phi/psi (--mode "
                          "phipsi only), a cross-check", choices=BIAS_METHODS)
    metad_storage: str = setting("auto", help="metad: the bias on a grid or as native hills; "
                                 "auto: grid for 1-3 CVs", choices=("auto", "grid", "hills"))
    # OPES (Invernizzi and Parrinello, J. Phys. Chem. Lett. 2020): the barrier sets the bias
    # factor (barrier/kT) and epsilon. The paper's alanine input used PACE=500 (1 ps at 2 fs)
    # and BARRIER=50; 40 kJ/mol (bias factor 16 at 300 K) crossed phi within the first ns
    # here (docs/results/cv-biasing.md)
    opes_barrier_kJmol: float = setting(40.0, help="opes: the free-energy barrier to overcome, "
                                        "kJ/mol: sets the bias factor and epsilon, and caps "
                                        "the bias near it", check="positive")
    opes_pace_ps: float = setting(1.0, help="opes: time between kernel depositions, ps",
                                  check="positive")
    opes_adaptive_sigma: bool = setting(True, help="opes: kernel widths from the CVs' running "
                                        "variance; no: fixed widths, the metadynamics hill "
                                        "widths (--phipsi-width rad, or --width-fraction x the "
                                        "learned CV's std)")
    opes_explore: bool = setting(False, help="opes: OPES-explore (the bias from the sampled, "
                                 "well-tempered distribution: faster exploration, noisier "
                                 "reweighting)")
    opes_compression_threshold: float = setting(1.0, help="opes: merge a new kernel into the "
                                                "nearest one closer than this, in units of its "
                                                "sigma", check="positive")
    # multiple walkers (openmm_geom.openmm.walkers): one bias, N simulations
    walkers: int = setting(1, help="metad, opes: this many simulations sharing one bias "
                           "(seeds SEED...SEED+N-1, OUT/walker-I; with --cluster one task each)",
                           check="count")
    exchange_ps: float = setting(1.0, help="walkers: time between exchanges of the hills or "
                                 "kernels, ps (a multiple of the deposition time)",
                                 check="positive")

    def __post_init__(self):
        check_settings(self)
        if not self.bias_factor > 1:
            raise ValueError(f"bias_factor must be > 1 (well-tempered), got {self.bias_factor!r}")

    def steps(self, ps: float) -> int:
        """Time steps in ``ps`` picoseconds (at least one)."""
        return max(1, int(round(ps * 1000.0 / self.timestep_fs)))


# -------------------------------------------------------------------- path signatures
#: ``signature reproduce``: the paper's gene-regulatory optimisation (30 epochs).
GENE_PRODUCTION = TrainingSettings(epochs=30, batch_size=48, learning_rate=5e-4, weight_decay=1e-4)
