"""geom2vec CVs end to end: features -> VAMPnet/SPIB -> exported CV -> baselines, figures.

The steps the ``openmm-geom cv`` commands run:

- :func:`train_vamp` / :func:`train_spib`: a :class:`~openmm_geom.models.geom2vec.TokenCV`
  (standardiser, token mixer, head) trained on stored token features, saved as a weights-only
  checkpoint that records the backbone's hash, the token map, the lag and the scores;
- :func:`export_cv`: backbone + trained head -> one TorchScript CV file for OpenMM
  (``positions nm -> cv[k]``), validated by the foundation bridge;
- :func:`distance_baseline` / :func:`dihedral_baseline`: deeptime's ``VAMPNet`` with the same
  MLP lobe, lag and output dimension on all heavy-atom pair distances or on sin/cos of
  phi/psi, scored on the same validation block by the same VAMP-2 estimator.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..analysis.peptide import (PHI_NEGATIVE_CORE, PHI_POSITIVE_CORE, PHI_SHIFT_ABOVE,
                               backbone_dihedrals, phi_psi_quadruplets, shifted_phi)
from ..errors import FileFormatError
from ..training.features import FeatureSet
from ..io import load_versioned, save_versioned
from ..training.vamp import fit_lobe
from .config import (DEFAULT_VAMP_TRAINER, QUICK_EXPLORE, QUICK_REPRODUCE, ExploreSettings,
                     ReproduceSettings, VampSettings)
from ..units import MOLAR_GAS_CONSTANT_KJ

__all__ = ["VampSettings", "DEFAULT_VAMP_TRAINER", "featurize_trajectories", "train_vamp",
           "train_spib", "load_token_cv", "export_cv", "build_geom2vec_cv", "distance_baseline",
           "dihedral_baseline", "lag_in_frames", "ReproduceSettings", "QUICK_REPRODUCE", "reproduce", "ExploreSettings",
           "QUICK_EXPLORE", "explore"]

TOKEN_CV_KIND, TOKEN_CV_VERSION = "token-cv", 1


def lag_in_frames(lag_ps: float, timestep_ps: float) -> int:
    frames = lag_ps / timestep_ps
    if frames < 1 or abs(frames - round(frames)) > 1e-6:
        raise ValueError(f"the lag {lag_ps} ps is not a positive multiple of the frame spacing "
                         f"{timestep_ps} ps")
    return int(round(frames))


def _token_cv(features: FeatureSet, head: torch.nn.Module, mixer_name: str, mixer_options: dict,
              seed: int):
    from ..models.geom2vec import TokenCV
    from ..models.mixers import build_mixer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        global_dim = 0 if features.global_features is None else features.global_features.shape[1]
        mixer = build_mixer(mixer_name, features.channels, features.n_tokens, global_dim,
                            **mixer_options)
        model = TokenCV(features.n_tokens, features.channels, global_dim, mixer, head(mixer.out_dim))
    model.standardizer.fit(torch.as_tensor(features.tokens[:: max(1, len(features.tokens) // 20000)]))
    return model


def _packed(features: FeatureSet) -> list:
    from ..models.geom2vec import TokenCV

    glob = features.global_trajectories()
    return [TokenCV.pack(t, None if glob is None else glob[i])
            for i, t in enumerate(features.trajectories())]


def _check_pair(train: FeatureSet, validate: Optional[FeatureSet]) -> None:
    if validate is not None:
        train.check_compatible(validate)
        if abs(train.timestep_ps - validate.timestep_ps) > 1e-9:
            raise FileFormatError(f"training frames are {train.timestep_ps} ps apart, "
                                   f"validation frames {validate.timestep_ps} ps")


def featurize_trajectories(trajectories: Sequence, backbone, topology, out, *,
                           selection: str = "heavy", tokens: str = "residue",
                           global_atoms: Optional[str] = None, stride: int = 1,
                           frames: Optional[slice] = None, timestep_ps: Optional[float] = None,
                           batch_size: int = 128, mean_pooling: bool = False,
                           progress: bool = True) -> dict:
    """``openmm-geom cv featurize``: token features of trajectories by a pretrained backbone.

    Parameters
    ----------
    trajectories : sequence of paths
        Non-periodic mdtraj-readable files, or npz with ``positions`` (frames, atoms, 3) nm.
    backbone : path
        Backbone file from ``cv pretrain``.
    topology : path
        PDB of the system.
    out : path
        The feature file (a self-describing npz).
    selection, tokens, global_atoms
        The token map (:meth:`~openmm_geom.models.geom2vec.TokenMap.from_topology`).
    stride : int
        Keep every ``stride``-th frame.
    frames : slice, optional
        Frames of each trajectory to keep (after ``stride``).
    timestep_ps : float, optional
        Frame spacing, ps, if the files lack it.
    batch_size : int
        Frames per backbone call.
    mean_pooling : bool
        Tokens as atom means instead of sums.
    progress : bool
        Progress bar on stderr.

    Returns
    -------
    dict
        ``out``, ``frames``, ``trajectories``, ``tokens``, ``channels``, ``timestep_ps``,
        ``backbone_sha256``. Every input is read before ``out`` is written.
    """
    import mdtraj

    from .. import arguments as check
    from ..data.trajectories import read_positions
    from ..models.geom2vec import TokenMap
    from ..training.denoising import load_backbone
    from ..training.features import featurize

    stride = check.count("stride", stride)
    batch_size = check.count("batch_size", batch_size)
    if timestep_ps is not None:
        timestep_ps = check.number("timestep_ps", timestep_ps)
    if not trajectories:
        raise ValueError("give at least one trajectory")
    if not Path(topology).is_file():
        raise FileNotFoundError(f"topology file not found: {topology}")
    featurizer, info = load_backbone(backbone)
    top = mdtraj.load_topology(str(topology))
    token_map = TokenMap.from_topology(top, selection, tokens, global_atoms)
    frames = slice(None) if frames is None else frames
    loaded, timestep = [], timestep_ps
    for path in trajectories:
        positions, boxes, dt = read_positions(path, top, stride=stride, n_atoms=top.n_atoms)
        if boxes is not None:
            raise ValueError(f"{path} is periodic: featurize periodic trajectories from "
                             "Python (openmm_geom.training.features.featurize takes boxes)")
        loaded.append(np.ascontiguousarray(positions[frames]))
        timestep = timestep or (dt / stride if dt else None)
    features = featurize(featurizer, token_map, loaded, backbone_sha256=info["sha256"],
                         stride=1, timestep_ps=(timestep * stride if timestep else None),
                         batch_size=batch_size, mean_pooling=mean_pooling, progress=progress)
    features.sources = [str(path) for path in trajectories]
    features.save(out)
    return {"out": str(out), "frames": int(len(features.tokens)),
            "trajectories": len(loaded), "tokens": features.token_map.token_names,
            "channels": features.channels, "timestep_ps": features.timestep_ps,
            "backbone_sha256": info["sha256"]}


def train_vamp(train: FeatureSet, validate: FeatureSet, out: Path, settings: VampSettings, *,
               seed: int = 0, progress: bool = True) -> dict:
    """Train a geom2vec VAMPnet on token features; write ``out/vamp_cv.pt`` and figures.

    Returns a summary with the held-out VAMP-2 (whole validation block) and paths.
    """
    from ..data.timelagged import TimeLaggedPairs
    from ..models.heads import VAMPHead
    from ..training.vamp import plot_learning_curve

    _check_pair(train, validate)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lag = lag_in_frames(settings.lag_ps, train.timestep_ps)
    head_hp = {"hidden": settings.hidden, "k": settings.k, "layers": settings.layers,
               "dropout": settings.dropout}
    model = _token_cv(train, lambda n: VAMPHead(n, **head_hp), settings.mixer,
                      settings.mixer_options, seed)
    train_pairs = TimeLaggedPairs(_packed(train), lag)
    validation_pairs = TimeLaggedPairs(_packed(validate), lag)
    trainer = dataclasses.replace(settings.trainer, seed=seed, progress=progress)
    result = fit_lobe(trainer, model, train_pairs, validation_pairs)
    summary = {"vamp2_train": result.train_score, "vamp2_validation": result.validation_score,
               "lag_ps": settings.lag_ps, "lag_frames": lag, "k": settings.k,
               "epochs": result.epochs, "stop_reason": result.stop_reason,
               "train_seconds": result.seconds, "train_pairs": len(train_pairs),
               "validation_pairs": len(validation_pairs)}
    path = save_token_cv(out / "vamp_cv.pt", result.lobe, train, kind="vamp",
                         head_hyperparameters=head_hp,
                         extra={"lag_ps": settings.lag_ps, "scores": summary,
                                "history": result.history, "seed": seed,
                                "cv_statistics": cv_statistics(result.lobe, train)})
    plot_learning_curve(result.history, out / "vamp_learning_curve.png")
    summary.update(checkpoint=str(path), learning_curve=str(out / "vamp_learning_curve.png"))
    if hasattr(result.lobe.mixer, "attention_maps"):
        summary["attention_maps"] = str(plot_attention(result.lobe, train, out / "attention_maps.png"))
    return summary


def cv_statistics(model, features: FeatureSet) -> list:
    """Mean, standard deviation, min and max of each CV over the training frames.

    Recorded with the trained CV: biasing needs the CVs' scale (hill widths, grid ranges).
    """
    from ..training.vamp import transform

    values = np.concatenate(transform(model.eval(), _packed(features)))
    return [{"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
             "max": float(v.max())} for v in values.T]


def save_token_cv(path: Path, model, features: FeatureSet, *, kind: str,
                  head_hyperparameters: dict, extra: dict) -> Path:
    payload = {
        "kind": kind,
        "mixer": json.dumps(model.mixer.hyperparameters),
        "head": json.dumps(head_hyperparameters),
        "token_map": features.token_map_json, "backbone": json.dumps(features.backbone),
        "mean_pooling": features.mean_pooling, "timestep_ps": features.timestep_ps,
        "n_tokens": features.n_tokens, "channels": features.channels,
        "global_dim": 0 if features.global_features is None else features.global_features.shape[1],
        "state_dict": copy.deepcopy(model.state_dict()), "extra": json.dumps(extra),
    }
    return save_versioned(path, TOKEN_CV_KIND, TOKEN_CV_VERSION, payload)


def load_token_cv(path) -> tuple:
    """(TokenCV in eval mode, info dict) from a checkpoint of :func:`train_vamp`/`train_spib`."""
    from ..models.geom2vec import TokenCV
    from ..models.heads import SPIBModel, VAMPHead
    from ..models.mixers import build_mixer

    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"no trained CV at {path}")
    payload = load_versioned(path, TOKEN_CV_KIND, (TOKEN_CV_VERSION,),
                             what="trained-CV checkpoint")
    mixer = build_mixer(**json.loads(payload["mixer"]))
    head_hp = json.loads(payload["head"])
    head = (VAMPHead(mixer.out_dim, **head_hp) if payload["kind"] == "vamp"
            else SPIBModel(mixer.out_dim, **head_hp))
    model = TokenCV(payload["n_tokens"], payload["channels"], payload["global_dim"], mixer, head)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    info = {key: payload[key] for key in ("kind", "token_map", "mean_pooling", "timestep_ps")}
    info["backbone"] = json.loads(payload["backbone"])
    info["extra"] = json.loads(payload["extra"])
    info["k"] = int(head_hp.get("k", head_hp.get("latent_dim", 0)))
    return model, info


def build_geom2vec_cv(backbone_path, cv_path):
    """The whole CV module (eager) from a backbone checkpoint and a trained-CV checkpoint."""
    from ..models.geom2vec import Geom2VecCV, TokenMap
    from ..training.denoising import load_backbone

    featurizer, backbone_info = load_backbone(backbone_path)
    token_cv, info = load_token_cv(cv_path)
    if info["backbone"].get("sha256") != backbone_info["sha256"]:
        raise FileFormatError(f"{cv_path} was trained on features of backbone "
                          f"{info['backbone'].get('sha256', '?')[:12]}, not of {backbone_path} "
                          f"({backbone_info['sha256'][:12]})")
    token_cv = token_cv.to(featurizer.dtype)
    cv = Geom2VecCV(featurizer, TokenMap.from_json(info["token_map"]), token_cv,
                    info["mean_pooling"])
    return cv.eval(), info


def export_cv(backbone_path, cv_path, out, example_positions, *, example_box=None,
              dtype: torch.dtype = torch.float32, cv_prefix: Optional[str] = None,
              format: str = "openmm") -> dict:
    """Write one TorchScript file ``positions (N, 3) nm [, box] -> cv[k]`` for OpenMM.

    ``example_positions`` (N, 3) nm fixes and checks the system (e.g. the PDB's). The CVs are
    named ``<kind>0 .. <kind>{k-1}`` (``vamp0``, ``spib0``...) unless ``cv_prefix`` is given.
    ``format="plumed"``: ``out`` is a file for PLUMED's ``PYTORCH_MODEL`` instead (inputs: the
    x, y, z of every atom in nm, :func:`openmm_geom.export.export_plumed`), its PLUMED input
    lines go to ``out`` with the suffix ``.dat``, and the OpenMM file to ``.openmm.pt``
    (``openmm_file`` in the result). Periodic CVs cannot be exported for PLUMED.
    ``format="aoti"``: an AOTInductor package for the native TorchCVForce (docs/aotinductor.md),
    compiled with every atom pair instead of the neighbour search (same values, fixed shapes);
    not periodic.
    """
    from ..export import export_model, export_plumed

    if format not in ("openmm", "plumed", "aoti"):
        raise ValueError(f"format must be 'openmm', 'plumed' or 'aoti', got {format!r}")
    if format == "aoti" and example_box is not None:
        raise ValueError("a periodic geom2vec CV cannot be packaged for AOTInductor (its "
                         "neighbour search has a position-dependent pair count); export it "
                         "as TorchScript (format 'openmm')")
    if format == "plumed":
        if example_box is not None:
            raise ValueError("a periodic CV cannot be exported for PLUMED: PYTORCH_MODEL gets "
                             "no box (drop --periodic)")
        out = Path(out)
        openmm_file = out.with_suffix(".openmm.pt")
        result = export_cv(backbone_path, cv_path, openmm_file, example_positions, dtype=dtype,
                           cv_prefix=cv_prefix)
        plumed = export_plumed(openmm_file, out, input_path=out.with_suffix(".dat"))
        result.update(out=str(out), format="plumed", openmm_file=str(openmm_file),
                      plumed_input=str(out.with_suffix(".dat")), plumed_form=plumed.form,
                      plumed_arguments=len(plumed.arguments), custom_ops=plumed.custom_ops)
        return result

    cv, info = build_geom2vec_cv(backbone_path, cv_path)
    cv = cv.to(dtype)
    example_positions = np.asarray(example_positions, dtype=np.float64)
    if example_positions.shape != (cv.n_system_atoms, 3):
        raise ValueError(f"the CV is for {cv.n_system_atoms} atoms; the example configuration "
                         f"has shape {example_positions.shape}")
    prefix = cv_prefix or info["kind"]
    names = [f"{prefix}{i}" for i in range(info["k"])]
    token_map = json.loads(info["token_map"])
    export_model(cv, out, length_unit="nanometer", periodic=example_box is not None,
                 example_positions=example_positions, example_box=example_box, kind="cv",
                 format="aoti" if format == "aoti" else "torchscript",
                 cutoff=cv.featurizer.cutoff, atom_types=None, cv_names=names, dtype=dtype,
                 hyperparameters={"backbone": info["backbone"]["hyperparameters"],
                                  "token_cv": info["kind"]},
                 extra={"backbone_sha256": info["backbone"]["sha256"],
                        "token_names": token_map["token_names"],
                        "selected_atoms": token_map["atom_indices"],
                        "lag_ps": info["extra"].get("lag_ps"),
                        "cv_statistics": dict(zip(names, info["extra"].get("cv_statistics",
                                                                           [])))})
    return {"out": str(out), "cv_names": names, "n_atoms": cv.n_system_atoms,
            "dtype": str(dtype).replace("torch.", "")}


def plot_attention(model, features: FeatureSet, path: Path, frames: int = 2000) -> Path:
    """PNG of the SubFormer's attention maps per layer, averaged over training frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import save_figure

    take = np.linspace(0, len(features.tokens) - 1, min(frames, len(features.tokens))).astype(int)
    tokens = torch.as_tensor(features.tokens[take]).to(model.standardizer.scalar_mean.dtype)
    glob = None if features.global_features is None else torch.as_tensor(
        features.global_features[take]).to(tokens.dtype)
    with torch.no_grad():
        maps = model.mixer.attention_maps(model.standardizer(tokens), glob)
    maps = maps.float()
    while maps.dim() > 3:  # (layers, B, [heads], T, T) -> (layers, T, T)
        maps = maps.mean(1)
    names = ["*"] + features.token_map.token_names
    layers = maps.shape[0]
    fig, axes = plt.subplots(1, layers, figsize=(4.2 * layers, 4), squeeze=False)
    for layer, ax in enumerate(axes[0]):
        image = ax.imshow(np.log10(maps[layer].numpy() + 1e-4), cmap="viridis")
        ticks = range(maps.shape[-1])
        labels = names if len(names) == maps.shape[-1] else [str(t) for t in ticks]
        ax.set_xticks(list(ticks), labels, rotation=90, fontsize=6)
        ax.set_yticks(list(ticks), labels, fontsize=6)
        ax.set_title(f"layer {layer + 1}: log10 attention")
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return save_figure(fig, path, 120)


def train_spib(train: FeatureSet, validate: FeatureSet, vamp_cv_path, out: Path, *,
               lag_ps: float, latent_dim: int = 2, n_states: int = 10, beta: float = 1e-3,
               hidden: int = 64, refinements: int = 5, lr: float = 1e-3, batch_size: int = 2048,
               max_epochs: int = 20, patience: int = 5, seed: int = 0,
               progress: bool = True) -> dict:
    """SPIB on geom2vec tokens; writes ``out/spib_cv.pt`` (exportable like the VAMPnet).

    The encoder reads the tokens through the trained VAMPnet's standardiser and token mixer,
    kept frozen (the paper trains a mixer per head; sharing one keeps SPIB's input small and
    its VampPrior representatives in a space of ``mixer.out_dim`` features). Initial labels:
    k-means with ``n_states`` clusters on the VAMPnet's CVs, fitted on training frames only and
    predicted for validation frames; SPIB then refines them (eq. 11).
    """
    from ..models.geom2vec import TokenCV
    from ..models.heads import SPIBModel
    from ..training import spib as spib_training
    from ..training.vamp import transform

    _check_pair(train, validate)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lag = lag_in_frames(lag_ps, train.timestep_ps)
    vamp_model, vamp_info = load_token_cv(vamp_cv_path)
    if vamp_info["kind"] != "vamp":
        raise FileFormatError(f"{vamp_cv_path} is a {vamp_info['kind']} CV; SPIB starts from a VAMPnet")
    if vamp_info["backbone"].get("sha256") != train.backbone.get("sha256") \
            or vamp_info["token_map"] != train.token_map_json:
        raise FileFormatError(f"{vamp_cv_path} was trained on other features (backbone or system)")
    for parameter in vamp_model.parameters():
        parameter.requires_grad_(False)

    class _Mixed(torch.nn.Module):  # packed tokens -> frozen standardiser + mixer features
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, packed):
            tokens, global_features = self.model.unpack(packed)
            return self.model.mixer(self.model.standardizer(tokens), global_features)

    train_packed, validate_packed = _packed(train), _packed(validate)
    mixed = _Mixed(vamp_model)
    train_x = [torch.as_tensor(x) for x in transform(mixed, train_packed)]
    validate_x = [torch.as_tensor(x) for x in transform(mixed, validate_packed)]
    train_cvs = np.concatenate(transform(vamp_model, train_packed))
    kmeans, train_labels = spib_training.initial_labels_kmeans(train_cvs, n_states, seed=seed)
    validate_cvs = np.concatenate(transform(vamp_model, validate_packed))
    validate_labels = kmeans.predict(validate_cvs.astype(kmeans.cluster_centers_.dtype))
    head_hp = {"latent_dim": latent_dim, "hidden": hidden, "n_states": n_states}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = SPIBModel(vamp_model.mixer.out_dim, **head_hp)
    result = spib_training.fit_spib(
        head, train_x, np.split(train_labels, np.cumsum(train.lengths)[:-1]), validate_x,
        np.split(validate_labels, np.cumsum(validate.lengths)[:-1]), lag=lag, beta=beta, lr=lr,
        batch_size=batch_size, refinements=refinements, max_epochs=max_epochs,
        patience=patience, seed=seed, progress=progress)
    final = np.concatenate(result.train_labels)
    summary = {"lag_ps": lag_ps, "latent_dim": latent_dim, "n_states_initial": n_states,
               "n_states_final": int(len(np.unique(final))),
               "validation_loss": result.validation_loss, "rounds": result.rounds,
               "train_seconds": result.seconds}
    model = TokenCV(vamp_model.n_tokens, vamp_model.channels, vamp_model.global_dim,
                    vamp_model.mixer, result.model, vamp_model.standardizer)
    path = save_token_cv(out / "spib_cv.pt", model, train, kind="spib",
                         head_hyperparameters=head_hp,
                         extra={"lag_ps": lag_ps, "beta": beta, "scores": summary, "seed": seed,
                                "history": result.history,
                                "cv_statistics": cv_statistics(model, train)})
    summary["checkpoint"] = str(path)
    return summary


# ------------------------------------------------------------------------------- baselines
def heavy_atom_distances(positions: np.ndarray, heavy: np.ndarray) -> np.ndarray:
    """(T, P) distances (nm) between all pairs of the given atoms."""
    i, j = np.triu_indices(len(heavy), 1)
    x = positions[:, heavy]
    return np.linalg.norm(x[:, i] - x[:, j], axis=-1).astype(np.float32)


def deeptime_vampnet(train: Sequence[np.ndarray], validate: Sequence[np.ndarray], lag: int,
                     settings: VampSettings, seed: int, progress: bool = False) -> dict:
    """deeptime's ``VAMPNet`` with an MLP lobe like ours; held-out VAMP-2 by our estimator
    (equal to deeptime's, tested) on the whole validation block."""
    from deeptime.decomposition.deep import VAMPNet
    from deeptime.util.data import TrajectoryDataset

    from ..data.timelagged import TimeLaggedPairs
    from ..models.heads import VAMPHead
    from ..training.vamp import vamp2_of

    trainer = settings.trainer
    mean = np.concatenate(train).mean(0)
    std = np.concatenate(train).std(0) + 1e-6
    norm = [((t - mean) / std).astype(np.float32) for t in train]
    vnorm = [((t - mean) / std).astype(np.float32) for t in validate]
    torch.manual_seed(seed)
    lobe = VAMPHead(norm[0].shape[1], hidden=settings.hidden, k=settings.k, layers=settings.layers)
    datasets = [TrajectoryDataset(lag, t) for t in norm]
    dataset = torch.utils.data.ConcatDataset(datasets)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=trainer.batch_size, shuffle=True,
                                         generator=generator)
    vdatasets = torch.utils.data.ConcatDataset([TrajectoryDataset(lag, t) for t in vnorm])
    vloader = torch.utils.data.DataLoader(vdatasets, batch_size=len(vdatasets), shuffle=False)
    vampnet = VAMPNet(lobe=lobe, learning_rate=trainer.lr, epsilon=trainer.epsilon,
                      score_method="VAMP2")
    start = time.perf_counter()
    vampnet.fit(loader, n_epochs=trainer.max_epochs, validation_loader=vloader,
                progress=None)
    seconds = time.perf_counter() - start
    lobe.eval()
    score = vamp2_of(lobe, TimeLaggedPairs(vnorm, lag))
    train_score = vamp2_of(lobe, TimeLaggedPairs(norm, lag))
    return {"vamp2_validation": float(score), "vamp2_train": float(train_score),
            "epochs": trainer.max_epochs, "train_seconds": seconds,
            "features": int(norm[0].shape[1])}


def distance_baseline(train_positions, validate_positions, heavy, lag, settings, seed):
    tr = [heavy_atom_distances(p, heavy) for p in train_positions]
    va = [heavy_atom_distances(p, heavy) for p in validate_positions]
    return deeptime_vampnet(tr, va, lag, settings, seed)


def dihedral_baseline(train_positions, validate_positions, topology, lag, settings, seed):
    def features(p):
        angles = backbone_dihedrals(p, topology)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)

    return deeptime_vampnet([features(p) for p in train_positions],
                            [features(p) for p in validate_positions], lag, settings, seed)


def _reproduce_training(kind: str, features, out, topology_path, train_positions,
                        validate_positions, lag: int, settings: VampSettings, seed: int,
                        progress: bool) -> dict:
    """One of :func:`reproduce`'s three VAMPnet trainings (a task): ``geom2vec`` on the
    token features, or deeptime's on heavy-atom ``distance`` s or backbone ``dihedral`` s."""
    import mdtraj

    if kind == "geom2vec":
        return train_vamp(features["train"], features["validate"], Path(out) / "vamp", settings,
                          seed=seed, progress=progress)
    top = mdtraj.load_topology(str(topology_path))
    if kind == "distance":
        return distance_baseline([train_positions], [validate_positions],
                                 top.select("not element H"), lag, settings, seed)
    return dihedral_baseline([train_positions], [validate_positions], top, lag, settings, seed)


# ------------------------------------------------------------------------------- reproduce
def obtain_backbone(out: Path, settings: ReproduceSettings, *, backbone=None, seed: int = 0,
                    progress: bool = True) -> tuple:
    """(path, summary): the given backbone, a cached ``out/backbone.pt``, or a new pretraining.

    The cache is reused only if its hyper-parameters equal the requested ones.
    """
    from ..data.corpus import build_corpus
    from ..training.denoising import load_backbone, pretrain

    if backbone is not None:
        _, info = load_backbone(backbone)
        return Path(backbone), {"source": "given", "path": str(backbone), "sha256": info["sha256"]}
    path = out / "backbone.pt"
    if path.exists():
        featurizer, info = load_backbone(path)
        wanted = {k: v for k, v in settings.backbone.items()}
        have = {k: featurizer.hyperparameters.get(k) for k in wanted}
        if have == wanted:
            return path, {"source": "cached", "path": str(path), "sha256": info["sha256"]}
    corpus_path = out / "corpus.npz"
    start = time.perf_counter()
    if not corpus_path.exists():
        build_corpus(corpus_path, seed=seed, progress=progress, **settings.corpus)
    corpus_seconds = time.perf_counter() - start
    result = pretrain(corpus_path, settings.backbone, out=path, epochs=settings.pretrain_epochs,
                      max_minutes=settings.pretrain_max_minutes, seed=seed, progress=progress)
    summary = {k: v for k, v in result.items() if k not in ("history",)}
    summary.update(source="pretrained", path=str(path), corpus_seconds=corpus_seconds)
    return path, summary


def reproduce(train_path, validate_path, topology_path, out, *,
              settings: Optional[ReproduceSettings] = None, backbone=None, seed: int = 0,
              progress: bool = True, temperature_K: float = 300.0, runner=None) -> dict:
    """The acceptance run: pretrain (or reuse) -> featurize -> VAMPnet vs deeptime baselines.

    ``train_path``/``validate_path``: npz (or mdtraj) trajectories of the system in
    ``topology_path``; the validation block is the first ``validation_frames`` frames of
    ``validate_path`` (a contiguous time block of an independent run). ``temperature_K`` is
    that of the data (it labels the CVs' free-energy plot). ``runner``
    (:class:`openmm_geom.parallel.TaskRunner`, optional): the three VAMPnet trainings (ours
    and the two deeptime baselines) run as its tasks (default: here, one after the other).
    """
    from ..parallel import Task, TaskRunner

    import mdtraj

    from ..data.trajectories import read_positions
    from ..training.features import featurize
    from ..models.geom2vec import TokenMap
    from ..training.denoising import load_backbone

    settings = settings or ReproduceSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    backbone_path, backbone_summary = obtain_backbone(out, settings, backbone=backbone,
                                                      seed=seed, progress=progress)
    featurizer, info = load_backbone(backbone_path)
    top = mdtraj.load_topology(str(topology_path))
    token_map = TokenMap.from_topology(top, settings.selection, settings.tokens,
                                       settings.global_atoms)
    n_atoms = top.n_atoms
    train_positions, _, dt_train = read_positions(train_path, stride=settings.stride,
                                                  n_atoms=n_atoms)
    validate_positions, _, dt_val = read_positions(validate_path, stride=settings.stride,
                                                   n_atoms=n_atoms)
    if settings.train_frames:
        train_positions = train_positions[:settings.train_frames]
    if settings.validation_frames:
        validate_positions = validate_positions[:settings.validation_frames]
    timestep = dt_train or 1.0 * settings.stride
    if dt_val is not None and dt_train is not None and abs(dt_val - dt_train) > 1e-9:
        raise ValueError(f"training frames are {dt_train} ps apart, validation frames {dt_val}")
    vamp_settings = settings.vamp
    lag = lag_in_frames(vamp_settings.lag_ps, timestep)
    for name, positions in (("training", train_positions), ("validation", validate_positions)):
        if lag >= len(positions):
            raise ValueError(f"the lag ({lag} frames) is longer than the {name} data "
                             f"({len(positions)} frames)")
    t0 = time.perf_counter()
    features = {}
    for name, positions in (("train", jittered(train_positions, settings, seed)),
                            ("validate", [validate_positions])):
        features[name] = featurize(featurizer, token_map, positions,
                                   backbone_sha256=info["sha256"], timestep_ps=timestep,
                                   progress=progress)
    featurize_seconds = time.perf_counter() - t0
    frames_per_second = (len(features["train"].tokens) + len(validate_positions)) / featurize_seconds
    runner = runner if runner is not None else TaskRunner(None)
    with runner:
        local = runner.client is None
        ours, distance, dihedral = runner.run(_reproduce_training, [
            Task(kind, (kind, features, str(out), str(topology_path), train_positions,
                        validate_positions, lag, vamp_settings, seed, progress and local))
            for kind in ("geom2vec", "distance", "dihedral")],
            log_dir=None if local else out / "logs", progress=progress and not local,
            description="VAMPnet trainings")
    cv_file = out / "cv.pt"
    export = export_cv(backbone_path, ours["checkpoint"], cv_file, validate_positions[0])
    figures = plot_cvs_against_dihedrals(ours["checkpoint"], features["validate"],
                                         validate_positions, top, out, temperature_K=temperature_K)
    resolution = resolution_against_phi_psi(backbone_path, ours["checkpoint"],
                                            validate_positions, top)
    return {
        "vamp2_geom2vec": ours["vamp2_validation"],
        "vamp2_distance_baseline": distance["vamp2_validation"],
        "vamp2_dihedral_baseline": dihedral["vamp2_validation"],
        "vamp2_train": {"geom2vec": ours["vamp2_train"], "distance": distance["vamp2_train"],
                        "dihedral": dihedral["vamp2_train"]},
        "lag_ps": vamp_settings.lag_ps, "k": vamp_settings.k,
        "train_frames": int(len(train_positions)), "validation_frames": int(len(validate_positions)),
        "timestep_ps": timestep, "tokens": settings.tokens, "selection": settings.selection,
        "n_tokens": token_map.n_tokens, "mixer": vamp_settings.mixer,
        "backbone": backbone_summary, "featurize_frames_per_second": frames_per_second,
        "train_seconds": {"geom2vec": ours["train_seconds"],
                          "distance": distance["train_seconds"],
                          "dihedral": dihedral["train_seconds"]},
        "geom2vec_stop_reason": ours["stop_reason"], "geom2vec_epochs": ours["epochs"],
        "exported_cv": export["out"], "cv_names": export["cv_names"],
        "cv_resolution_nm": resolution, "jitter_nm": settings.jitter_nm,
        "jitter_copies": settings.jitter_copies if settings.jitter_nm > 0 else 0,
        "figures": figures + [ours["learning_curve"]] + (
            [ours["attention_maps"]] if "attention_maps" in ours else []),
        "seed": seed, "wall_seconds": time.perf_counter() - started,
    }


def jittered(positions: np.ndarray, settings: ReproduceSettings, seed: int) -> list:
    """The training frames as given (``jitter_nm`` 0) or ``jitter_copies`` copies of them with
    independent Gaussian noise of ``jitter_nm`` on every coordinate.

    Noise of a few thousandths of a nm (below the thermal bond-length fluctuations) makes the
    VAMPnet ignore what such small displacements change: the CVs it learns are then smooth
    enough to bias (see :func:`resolution_against_phi_psi`).
    """
    if settings.jitter_nm <= 0:
        return [positions]
    rng = np.random.default_rng(seed)
    return [positions + rng.normal(0.0, settings.jitter_nm, positions.shape)
            for _ in range(settings.jitter_copies)]


def resolution_against_phi_psi(backbone_path, cv_path, positions: np.ndarray, topology,
                               max_frames: int = 1000) -> dict:
    """Resolution lengths (nm, :func:`~openmm_geom.analysis.cv_quality.cv_resolution`) of the
    trained CVs and of phi/psi over (at most ``max_frames``, evenly spaced) ``positions``."""
    import math

    from ..analysis.cv_quality import cv_resolution
    from ..models.geometry import Dihedrals

    frames = positions[::max(1, -(-len(positions) // max_frames))]
    model, _ = build_geom2vec_cv(backbone_path, cv_path)
    dihedrals = Dihedrals(phi_psi_quadruplets(topology)).double()

    def phi_psi(x):
        angles = torch.vmap(dihedrals)(x)
        phi = torch.where(angles[:, 0] > PHI_SHIFT_ABOVE, angles[:, 0] - 2.0 * math.pi,
                          angles[:, 0])
        return torch.stack((phi, angles[:, 1]), dim=1)

    return {"cvs": cv_resolution(model.double().batch, frames).tolist(),
            "phi_psi": cv_resolution(phi_psi, frames).tolist(), "frames": int(len(frames))}


# ------------------------------------------------------------------------- explore hot
def explore(pdb_path, out, *, settings: Optional[ExploreSettings] = None, backbone=None,
            seed: int = 0, threads: Optional[int] = None, progress: bool = True) -> dict:
    """Two independent hot OpenMM runs -> :func:`reproduce` on them (train on one, validate
    on the other) -> an exported CV in ``out/cv.pt`` to bias the system at any temperature.

    Like :func:`reproduce` it is written for a capped dipeptide (the baselines and plots use
    its phi/psi); the exported CV itself knows nothing of phi/psi.

    The hot runs are ``out/hot_train.npz`` and ``out/hot_validate.npz``; they checkpoint as
    they go and an existing run with the same settings is reused, so calling again resumes or
    skips the simulation. The JSON adds ``exploration``: the runs' settings, wall time and the
    phi transitions (core to core) they contain, the event the CVs should learn.
    """
    import warnings

    import mdtraj

    from ..analysis.reweight import count_transitions
    from ..data.datagen import generate_reference

    settings = settings or ExploreSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_frames = int(round(settings.nanoseconds * 1000.0 / settings.save_interval_ps))
    if n_frames < 2:
        raise ValueError(f"{settings.nanoseconds} ns at {settings.save_interval_ps} ps per frame "
                         "is less than two frames")
    started = time.perf_counter()
    paths = []
    for offset, name in enumerate(("train", "validate")):
        path = out / f"hot_{name}.npz"
        with warnings.catch_warnings():  # forces are not used here, so constraints are fine
            warnings.filterwarnings("ignore", message=".*constraint forces.*")
            generate_reference(pdb_path, path, n_frames=n_frames,
                               save_interval_ps=settings.save_interval_ps,
                               timestep_fs=settings.timestep_fs,
                               temperature_K=settings.temperature_K,
                               equilibration_ps=settings.equilibration_ps,
                               constraints=settings.constraints, seed=seed + 1 + offset,
                               threads=threads, progress=progress)
        paths.append(path)
    simulate_seconds = time.perf_counter() - started
    topology = mdtraj.load_topology(str(pdb_path))
    transitions = []
    for path in paths:
        with np.load(path) as data:
            phi = backbone_dihedrals(data["positions"], topology)[:, 0]
        transitions.append(int(count_transitions(shifted_phi(phi), PHI_NEGATIVE_CORE,
                                                 PHI_POSITIVE_CORE)))
    result = reproduce(paths[0], paths[1], pdb_path, out, settings=settings.learn,
                       backbone=backbone, seed=seed, progress=progress,
                       temperature_K=settings.temperature_K)
    result["exploration"] = {
        "temperature_K": settings.temperature_K, "ns_per_run": settings.nanoseconds,
        "save_interval_ps": settings.save_interval_ps, "timestep_fs": settings.timestep_fs,
        "constraints": settings.constraints, "trajectories": [str(p) for p in paths],
        "phi_transitions": transitions, "simulate_seconds": simulate_seconds}
    result["wall_seconds"] = time.perf_counter() - started
    return result


def plot_cvs_against_dihedrals(cv_path, features: FeatureSet, positions: np.ndarray, topology,
                               out: Path, max_points: int = 20000,
                               temperature_K: float = 300.0) -> list:
    """PNGs: each learned CV coloured over the phi/psi plane, and the CVs' free-energy surface."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import save_figure
    from ..training.vamp import transform

    model, info = load_token_cv(cv_path)
    cvs = np.concatenate(transform(model, _packed(features)))
    angles = backbone_dihedrals(positions, topology)
    take = np.linspace(0, len(cvs) - 1, min(max_points, len(cvs))).astype(int)
    k = cvs.shape[1]
    fig, axes = plt.subplots(1, k, figsize=(4.5 * k, 4), squeeze=False)
    for i, ax in enumerate(axes[0]):
        image = ax.scatter(angles[take, 0], angles[take, 1], c=cvs[take, i], s=2, cmap="coolwarm")
        ax.set_xlabel("phi (rad)")
        ax.set_ylabel("psi (rad)")
        ax.set_title(f"{info['kind']} CV {i}")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    first = save_figure(fig, out / "cvs_vs_phi_psi.png", 120)
    figures = [str(first)]
    if k >= 2:
        counts, xe, ye = np.histogram2d(cvs[:, 0], cvs[:, 1], bins=60)
        with np.errstate(divide="ignore"):
            free = -MOLAR_GAS_CONSTANT_KJ * temperature_K * np.log(counts / counts.sum())
        free -= np.nanmin(free[np.isfinite(free)])
        fig, ax = plt.subplots(figsize=(5, 4))
        image = ax.pcolormesh(xe, ye, np.where(np.isfinite(free), free, np.nan).T, cmap="viridis")
        ax.set_xlabel("CV 0")
        ax.set_ylabel("CV 1")
        ax.set_title(f"free energy of the learned CVs (kJ/mol, {temperature_K:g} K)")
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        figures.append(str(save_figure(fig, out / "cv_free_energy.png", 120)))
    return figures
