"""Denoising pretraining of the geom2vec backbone on the offline corpus.

Real pieces throughout: ASE's g2 molecules, the bundled alanine dipeptide, a real (short)
OpenMM amber14 run, and a tiny TorchMD-ET backbone.
"""
import json

import numpy as np
import pytest
import torch

from openmm_geom.data import bundled
from openmm_geom.data.corpus import FileFormatError, build_corpus, load_corpus, \
    pack_structures
from openmm_geom.models.geom2vec import Geom2VecFeaturizer
from openmm_geom.errors import ModelFileError
from openmm_geom.training.denoising import (DenoisingModel, backbone_paths,
                                            load_backbone, load_denoising_model, pretrain,
                                            predict_structures)

G2 = ["CH4", "H2O", "NH3", "C2H6", "CH3OH", "C6H6", "CH3CH2OH", "HCOOH", "CH3COOH", "C2H4",
      "HCN", "CH3CN", "C3H8", "isobutane", "trans-butane", "CH3NO2", "C4H4O", "C5H5N",
      "CH2OCH2", "methylenecyclopropane", "H2", "Cl2"]
TINY = dict(architecture="et", hidden_channels=16, num_layers=1, num_rbf=16, num_heads=2,
            seed=3)
TRAIN = dict(batch_size=10, lr=5e-3, validation_fraction=0.2, seed=5, progress=False, threads=1)


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.npz"
    alanine = bundled("alanine-dipeptide.pdb")
    summary = build_corpus(path, ase_collections={"g2": G2}, include_bundled=False,
                           include_openmm_data=False, pdbs=[alanine], md_pdbs=[alanine],
                           md_picoseconds=0.6, md_temperatures=(300.0, 600.0),
                           md_equilibration_ps=0.1, progress=False, threads=1, seed=2)
    assert summary["n_structures"] == len(load_corpus(path))
    return path


@pytest.fixture(scope="module")
def corpus(corpus_path):
    return load_corpus(corpus_path)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "backbone.pt"
    result = pretrain(corpus, TINY, out=out, epochs=10, resume=False, **TRAIN)
    return out, result


# ------------------------------------------------------------------------------------ corpus

def test_corpus_arrays(corpus):
    assert corpus.offsets[0] == 0 and corpus.offsets[-1] == corpus.n_atoms
    assert np.all(np.diff(corpus.offsets) >= 2)
    assert corpus.positions.dtype == np.float32 and corpus.positions.shape == (corpus.n_atoms, 3)
    assert corpus.group.shape == (len(corpus),)
    assert corpus.group.max() < corpus.n_groups
    names = set(corpus.names)
    assert {"g2:CH4", "g2:C6H6", "alanine-dipeptide"} <= names
    assert "g2:H2" in names  # two atoms: kept; no heavy variant (one heavy atom) though
    # units: nm. CH4's C-H bond is 0.109 nm
    i = corpus.names.index("g2:CH4")
    full = [s for s in np.flatnonzero(corpus.group == i) if not corpus.heavy_only[s]][0]
    z, pos = corpus.structure(full)
    d = np.linalg.norm(pos[z == 1] - pos[z == 6], axis=1)
    np.testing.assert_allclose(d, 0.109, atol=0.002)
    # alanine: the static structure plus 2 temperatures x 6 snapshots, each with a heavy variant
    ala = np.flatnonzero(corpus.group == corpus.names.index("alanine-dipeptide"))
    assert len(ala) == 2 * (1 + 2 * 6)
    assert sorted(set(corpus.sizes[ala])) == [10, 22]
    meta = corpus.metadata
    assert meta["units"]["positions"] == "nm" and meta["sha256"] == corpus.sha256
    assert meta["structures_per_source"]["md"] == 24
    md = [s for s in meta["sources"] if s["source"] == "md"][0]
    assert md["force_field"] == "amber14-all.xml" and md["frames"] == 12
    # MD snapshots differ from one another (the run moved)
    a = corpus.structure(int(ala[2]))[1]
    b = corpus.structure(int(ala[4]))[1]
    assert a.shape == b.shape and np.abs(a - b).max() > 0.01


def test_heavy_atom_variants_have_no_hydrogens(corpus):
    heavy = np.flatnonzero(corpus.heavy_only)
    assert len(heavy) > 10
    for s in heavy:
        z, _ = corpus.structure(int(s))
        assert not np.any(z == 1) and len(z) >= 2
        # every heavy variant has its all-atom original in the same group
        same = np.flatnonzero((corpus.group == corpus.group[s]) & ~corpus.heavy_only)
        assert len(same) > 0
    # all-atom structures of molecules with hydrogens do contain hydrogens
    assert any(np.any(corpus.structure(int(s))[0] == 1) for s in np.flatnonzero(~corpus.heavy_only))


def test_split_is_by_group(corpus):
    train, val = corpus.split_by_group(0.2, seed=5)
    assert len(train) + len(val) == len(corpus)
    assert len(np.intersect1d(train, val)) == 0
    assert not set(corpus.group[train]) & set(corpus.group[val])
    assert len(val) >= 0.2 * len(corpus)
    again = corpus.split_by_group(0.2, seed=5)
    np.testing.assert_array_equal(again[1], val)
    assert len(corpus.size_buckets()) > 1
    buckets = corpus.size_buckets()
    assert sum(len(v) for v in buckets.values()) == len(corpus)
    assert all(np.all(corpus.sizes[v] == n) for n, v in buckets.items())


def test_corpus_file_errors(corpus_path, tmp_path):
    with pytest.raises(FileFormatError, match="not found"):
        load_corpus(tmp_path / "nope.npz")
    data = corpus_path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="cut.npz is not an npz file"):
        load_corpus(tmp_path / "cut.npz")
    np.savez(tmp_path / "other.npz", positions=np.zeros((3, 3)))
    with pytest.raises(FileFormatError, match="not an openmm-geom 'corpus' file"):
        load_corpus(tmp_path / "other.npz")
    with np.load(corpus_path) as f:
        partial = {k: f[k] for k in f.files if k != "offsets"}
    np.savez(tmp_path / "partial.npz", **partial)
    with pytest.raises(FileFormatError, match=r"missing arrays \['offsets'\]"):
        load_corpus(tmp_path / "partial.npz")
    # edited content: the recorded hash no longer matches
    with np.load(corpus_path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["positions"] = arrays["positions"] + np.float32(0.01)
    np.savez(tmp_path / "edited.npz", **arrays)
    with pytest.raises(FileFormatError, match="hash"):
        load_corpus(tmp_path / "edited.npz")


# ------------------------------------------------------------------------------- pretraining

def test_pretraining_beats_zero_baseline(trained):
    out, result = trained
    baseline = result["zero_baseline_validation_loss"]
    assert 0.8 < baseline < 1.2  # E[eps^2] = 1 on the fixed validation noise
    history = result["history"]
    assert len(history["validation_loss"]) == 10 and result["finished"]
    assert result["best_validation_loss"] == min(history["validation_loss"])
    assert result["best_validation_loss"] < 0.9 * baseline
    paths = backbone_paths(out)
    saved = json.loads(paths["history"].read_text())
    assert saved["validation_loss"] == history["validation_loss"]
    assert paths["learning_curve"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_backbone_round_trip(trained, corpus):
    out, result = trained
    featurizer, info = load_backbone(out)
    assert not featurizer.training
    assert info["format"] == "openmm-geom/backbone/1"
    assert info["corpus_sha256"] == corpus.sha256 and info["noise_nm"] == 0.02
    assert info["best_epoch"] == result["best_epoch"]
    assert info["sha256"] == result["sha256"] and len(info["sha256"]) == 64
    assert Geom2VecFeaturizer(**info["hyperparameters"]).hyperparameters == \
        featurizer.hyperparameters
    # features equal those of the deep-copied best state kept in the checkpoint
    checkpoint = torch.load(backbone_paths(out)["checkpoint"], weights_only=True)
    reference = Geom2VecFeaturizer(**info["hyperparameters"])
    reference.load_state_dict(checkpoint["best_state"]["featurizer"])
    z, pos = corpus.structure(0)
    z = torch.as_tensor(z)
    pos = torch.as_tensor(pos).unsqueeze(0)
    with torch.no_grad():
        loaded = featurizer(z, pos)
        assert torch.equal(loaded, reference(z, pos))
        assert torch.equal(loaded, load_backbone(out)[0](z, pos))
        fresh = Geom2VecFeaturizer(**info["hyperparameters"])(z, pos)
    assert not torch.allclose(loaded, fresh)  # the weights were trained
    model, _ = load_denoising_model(out)
    assert model.noise_nm == 0.02 and not model.training


def test_resume_is_bit_identical(corpus, tmp_path):
    whole = pretrain(corpus, TINY, out=tmp_path / "a" / "bb.pt", epochs=2, resume=False, **TRAIN)
    steps_per_epoch = int(np.ceil(whole["n_train_structures"] / TRAIN["batch_size"]))
    assert steps_per_epoch >= 4
    out = tmp_path / "b" / "bb.pt"
    part = pretrain(corpus, TINY, out=out, epochs=2, stop_after_steps=2, **TRAIN)
    assert part["stopped_early"] and part["epochs_completed"] == 0 and part["step_in_epoch"] == 2
    part = pretrain(corpus, TINY, out=out, epochs=2, stop_after_steps=steps_per_epoch, **TRAIN)
    assert part["resumed"] and part["epochs_completed"] == 1 and part["stopped_early"]
    rest = pretrain(corpus, TINY, out=out, epochs=2, **TRAIN)
    assert rest["finished"] and rest["resumed"]
    assert rest["history"]["validation_loss"] == whole["history"]["validation_loss"]
    assert rest["history"]["train_loss"] == whole["history"]["train_loss"]
    a = torch.load(tmp_path / "a" / "bb.pt", weights_only=True)
    b = torch.load(out, weights_only=True)
    for key in ("state_dict", "head_state_dict"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    ca = torch.load(tmp_path / "a" / "bb.pt.checkpoint", weights_only=True)
    cb = torch.load(tmp_path / "b" / "bb.pt.checkpoint", weights_only=True)
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    # a checkpoint of other settings is refused, not silently mixed in
    with pytest.raises(ValueError, match="different settings.*lr"):
        pretrain(corpus, TINY, out=out, epochs=3, **dict(TRAIN, lr=1e-3))


def test_backbone_file_errors(trained, tmp_path):
    out, _ = trained
    with pytest.raises(ModelFileError, match="not found"):
        load_backbone(tmp_path / "missing.pt")
    data = out.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="not a backbone file|could not be read"):
        load_backbone(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ModelFileError, match="not a backbone file"):
        load_backbone(tmp_path / "text.pt")
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not an openmm-geom 'backbone' file"):
        load_backbone(tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="an openmm-geom 'denoising-checkpoint' file"):
        load_backbone(backbone_paths(out)["checkpoint"])
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "scripted.pt"))
    with pytest.raises(ModelFileError, match="TorchScript"):
        load_backbone(tmp_path / "scripted.pt")


# ------------------------------------------------------------------------------- equivariance

def _rotation(seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return torch.as_tensor(q)


def test_denoising_head_is_rotation_equivariant(corpus):
    model = DenoisingModel(Geom2VecFeaturizer(**dict(TINY, dtype=torch.float64)), seed=1).eval()
    i = corpus.names.index("alanine-dipeptide")
    s = int(np.flatnonzero((corpus.group == i) & ~corpus.heavy_only)[0])
    z, pos = corpus.structure(s)
    z = torch.as_tensor(z)
    pos = torch.as_tensor(pos, dtype=torch.float64)
    R = _rotation(0)
    shift = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    with torch.no_grad():
        pred = model(z, pos.unsqueeze(0))[0]
        rotated = model(z, (pos @ R.T + shift).unsqueeze(0))[0]
        assert pred.shape == (22, 3) and pred.abs().max() > 1e-4
        torch.testing.assert_close(rotated, pred @ R.T, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(model.predict_noise_nm(z, pos.unsqueeze(0))[0], pred * 0.02)
        # packing structures into one disjoint graph changes nothing
        j = int(np.flatnonzero(corpus.group == corpus.names.index("g2:C6H6"))[0])
        zj, pj = corpus.structure(j)
        packed = predict_structures(model, [z, torch.as_tensor(zj)],
                                    [pos, torch.as_tensor(pj, dtype=torch.float64)])
        torch.testing.assert_close(packed[0], pred, rtol=1e-9, atol=1e-9)
        alone = model(torch.as_tensor(zj), torch.as_tensor(pj, dtype=torch.float64)[None])[0]
        torch.testing.assert_close(packed[1], alone, rtol=1e-9, atol=1e-9)


def test_pack_structures_keeps_structures_apart():
    a = torch.randn(30, 3, dtype=torch.float64) * 0.3
    b = torch.randn(5, 3, dtype=torch.float64) * 0.2
    packed = pack_structures([a, b, a], cutoff_nm=0.5)
    pa, pb, pc = packed[:30], packed[30:35], packed[35:]
    assert torch.cdist(pa, pb).min() > 0.5 and torch.cdist(pa, pc).min() > 0.5
    torch.testing.assert_close(torch.cdist(pa, pa), torch.cdist(a, a))
