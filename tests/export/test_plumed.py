"""Our CVs for PLUMED's PYTORCH_MODEL, evaluated exactly as PLUMED evaluates them.

PLUMED (src/pytorch/PytorchModel.cpp, 2.9/2.10): torch::jit::load, eval, torch::jit::freeze,
optimize_for_inference; the output count from a zero input of shape (1, n_args); at each step
the ARG values as a float32 (1, n_args) tensor with requires_grad, outputs read as float
(data_ptr<float>), derivatives by autograd of output[:, j:j+1]. The ARG values here come from
a small numpy interpreter of the PLUMED input lines export_plumed writes (DISTANCE, ANGLE,
TORSION, CUSTOM sin/cos, POSITION; nm, rad), so the lines and their order are tested too.

Tolerances, chosen before running: 1e-10 between our CV and the file fed float64 ARG values
(the file's arithmetic is float64); PLUMED's float32 path within 1e-5 (1 + |cv|) of our CV and
its derivatives within 1e-4 of the largest (float32 rounding of the inputs and outputs).
"""
import numpy as np
import openmm.app as app
import openmm.unit as unit
import pytest
import torch
from cv_models import RandomPairCVs

from openmm_geom.data import bundled
from openmm_geom.errors import ExportError
from openmm_geom.export import export_model, export_plumed
from openmm_geom.models import Dihedrals, backbone_quadruplets
from openmm_geom.models.descriptors import (Angles, DescriptorSet, PairwiseDistances, Positions,
                                            Torsions, descriptor_cv)


@pytest.fixture(scope="module")
def alanine():
    pdb = app.PDBFile(str(bundled("alanine-dipeptide.pdb")))
    x0 = np.array(pdb.positions.value_in_unit(unit.nanometer))
    rng = np.random.default_rng(5)
    frames = x0[None] + rng.normal(0, 0.02, (4,) + x0.shape)
    return pdb.topology, frames


def _torsion(x, a, b, c, d):
    b0, b1, b2 = x[a] - x[b], x[c] - x[b], x[d] - x[c]
    b1 = b1 / np.linalg.norm(b1)
    v, w = b0 - (b0 @ b1) * b1, b2 - (b2 @ b1) * b1
    return np.arctan2(np.cross(b1, v) @ w, v @ w)


def _angle(x, a, b, c):
    u, v = x[a] - x[b], x[c] - x[b]
    return np.arccos(u @ v / np.linalg.norm(u) / np.linalg.norm(v))


def _plumed_arguments(text, x, file_name):
    """The ARG values of the PYTORCH_MODEL line, computed by interpreting ``text`` (float64)."""
    values = {}
    model_args = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        label, action = line.split(":", 1) if ":" in line.split()[0] else (None, line)
        words = action.split()
        keys = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        atoms = [int(a) - 1 for a in keys.get("ATOMS", keys.get("ATOM", "")).split(",") if a]
        kind = words[0]
        if kind == "DISTANCE":
            assert "NOPBC" in words
            values[label] = np.linalg.norm(x[atoms[1]] - x[atoms[0]])
        elif kind == "ANGLE":
            values[label] = _angle(x, *atoms)
        elif kind == "TORSION":
            values[label] = _torsion(x, *atoms)
        elif kind == "CUSTOM":
            function = {"sin(x)": np.sin, "cos(x)": np.cos}[keys["FUNC"]]
            values[label] = function(values[keys["ARG"]])
        elif kind == "POSITION":
            for c, value in zip("xyz", x[atoms[0]]):
                values[f"{label}.{c}"] = value
        elif kind == "PYTORCH_MODEL":
            assert keys["FILE"] == file_name
            model_args = keys["ARG"].split(",")
        elif kind != "PRINT":
            raise AssertionError(f"unexpected PLUMED action {line!r}")
    return np.array([values[a] for a in model_args])


def _as_plumed(path, n_args, arguments):
    """PYTORCH_MODEL's calls, in Python: values (k,) and derivatives (k, n_args), float32."""
    model = torch.jit.load(str(path))
    model.eval()
    model = torch.jit.optimize_for_inference(torch.jit.freeze(model))
    n_out = model(torch.zeros(n_args, dtype=torch.float32).view(1, n_args)).numel()
    x = torch.tensor(arguments.astype(np.float32)).view(1, n_args).requires_grad_(True)
    output = model(x)
    assert output.dtype == torch.float32 and tuple(output.shape) == (1, n_out)
    derivatives = [torch.autograd.grad(output[:, j:j + 1], x, torch.ones(1, 1),
                                       retain_graph=True)[0].reshape(-1) for j in range(n_out)]
    return output.detach().reshape(-1).numpy(), torch.stack(derivatives).numpy()


def _float64(path, arguments):
    model = torch.jit.load(str(path)).eval()
    x = torch.tensor(arguments, dtype=torch.float64).view(1, -1)
    out = model(x)
    assert out.dtype == torch.float64
    return out.detach().reshape(-1).numpy()


def _descriptor_cv(topology):
    front = DescriptorSet([PairwiseDistances([1, 4, 6, 8, 14, 18]),
                           Angles([[4, 6, 8], [6, 8, 14]]),
                           Torsions(backbone_quadruplets(topology)), Positions([8])])
    torch.manual_seed(2)
    head = torch.nn.Sequential(torch.nn.Linear(front.n_features, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 3)).double()
    return descriptor_cv(front, head, cv_names=["a", "b", "c"])


@pytest.mark.parametrize("source", ["module", "file"])
def test_descriptor_form_matches_our_cv(alanine, tmp_path, source):
    topology, frames = alanine
    cv = _descriptor_cv(topology)
    exported = export_model(cv, tmp_path / "cv.pt", kind="cv", length_unit="nm",
                            periodic=False, example_positions=frames[0])
    result = export_plumed(cv if source == "module" else exported, tmp_path / "model.ptc",
                           input_path=tmp_path / "plumed.dat")
    assert result.form == "descriptors" and result.cv_names == ["a", "b", "c"]
    text = (tmp_path / "plumed.dat").read_text()
    assert text == result.plumed_input and "PYTORCH_MODEL FILE=model.ptc" in text
    assert len(result.arguments) == cv.n_features == 15 + 2 + 4 + 3
    for x in frames:
        ours = exported.module(torch.tensor(x)).detach().numpy()
        arguments = _plumed_arguments(text, x, "model.ptc")
        np.testing.assert_allclose(_float64(result.path, arguments), ours, rtol=0, atol=1e-10)
        values, derivatives = _as_plumed(result.path, len(arguments), arguments)
        np.testing.assert_allclose(values, ours, rtol=0, atol=1e-5 * (1 + np.abs(ours).max()))
        features = torch.tensor(arguments).requires_grad_(True)
        expected = torch.stack([torch.autograd.grad(cv.model(features[None])[0, j], features)[0]
                                for j in range(3)]).numpy()
        np.testing.assert_allclose(derivatives, expected, rtol=0,
                                   atol=1e-4 * np.abs(expected).max())


def test_positions_form_of_our_dihedrals(alanine, tmp_path):
    topology, frames = alanine
    exported = export_model(Dihedrals(backbone_quadruplets(topology)), tmp_path / "phipsi.pt",
                            kind="cv", length_unit="nm", periodic=False,
                            example_positions=frames[0], cv_names=["phi", "psi"])
    result = export_plumed(exported, tmp_path / "phipsi.ptc")
    assert result.form == "positions" and len(result.arguments) == 3 * 22
    assert result.arguments[:3] == ["p0.x", "p0.y", "p0.z"] and result.custom_ops == []
    for x in frames:
        ours = exported.module(torch.tensor(x)).detach().numpy()
        arguments = _plumed_arguments(result.plumed_input, x, "phipsi.ptc")
        np.testing.assert_allclose(_float64(result.path, arguments), ours, rtol=0, atol=1e-10)
        values, _ = _as_plumed(result.path, len(arguments), arguments)
        difference = np.angle(np.exp(1j * (values - ours)))   # on the circle
        assert np.abs(difference).max() < 1e-5


def test_positions_form_in_another_length_unit_and_custom_ops(alanine, tmp_path):
    """A CV written in Angstrom takes PLUMED's nm; a CV on our neighbour search names the
    operator libraries PLUMED would have to load."""
    topology, frames = alanine
    model = RandomPairCVs(2, seed=4, cutoff=4.0).double()      # cutoff in A
    exported = export_model(model, tmp_path / "pairs.pt", kind="cv", length_unit="angstrom",
                            periodic=False, example_positions=frames[0], cutoff=4.0)
    result = export_plumed(exported, tmp_path / "pairs.ptc")
    assert result.custom_ops and "libraries loaded" in result.plumed_input
    for x in frames[:2]:
        ours = exported.module(torch.tensor(x)).detach().numpy()
        arguments = _plumed_arguments(result.plumed_input, x, "pairs.ptc")
        np.testing.assert_allclose(_float64(result.path, arguments), ours, rtol=0, atol=1e-10)


def test_periodic_cv_is_refused(tmp_path, rng):
    positions = rng.uniform(0, 1.2, (8, 3))
    exported = export_model(RandomPairCVs(1, seed=1, cutoff=0.4), tmp_path / "p.pt", kind="cv",
                            length_unit="nm", periodic=True, example_positions=positions,
                            example_box=np.eye(3) * 1.2, cutoff=0.4)
    with pytest.raises(ExportError, match="ARG interface"):
        export_plumed(exported, tmp_path / "p.ptc")
    assert not (tmp_path / "p.ptc").exists()


def test_descriptor_form_needs_a_descriptor_cv(alanine, tmp_path):
    topology, frames = alanine
    export_model(Dihedrals(backbone_quadruplets(topology)), tmp_path / "d.pt", kind="cv",
                 length_unit="nm", periodic=False, example_positions=frames[0])
    with pytest.raises(ExportError, match="not a descriptor CV"):
        export_plumed(tmp_path / "d.pt", tmp_path / "d.ptc", form="descriptors")
    with pytest.raises(ExportError, match="exported CV file"):
        export_plumed(_descriptor_cv(topology), tmp_path / "d.ptc", form="positions")
    assert not (tmp_path / "d.ptc").exists()
