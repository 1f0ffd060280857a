"""TorchCVForce's AOTInductor backend: a compiled package of the CVs and of their VJP.

One package (two compiled models, about a minute of C++ compilation with a cold inductor
cache) is shared by the module; each test compares it to the TorchScript backend of the same
module, to finite differences, or checks an error.
"""
import math

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch
from analytic import jittered_lattice
from cv_models import DensePairCVs, central_difference_forces
from cv_models import context_state as _state
from cv_models import particle_context as _context

from openmm_geom import torchcv_plugin as plugin
from openmm_geom.errors import ExportError, ModelFileError
from openmm_geom.export import export_model
from openmm_geom.modelfile import ExportedModel, read_metadata
from openmm_geom.openmm import TorchCVForce

KJ = unit.kilojoule_per_mole
ENERGY = "0.5*kk*(cv0-s0)^2 + sin(cv1)*cv0"
PARAMETERS = {"kk": 3.0, "s0": 0.2}
BOX = np.diag([0.9, 0.9, 0.9]) + np.array([[0, 0, 0], [0.1, 0, 0], [-0.05, 0.08, 0]])


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The same 2-CV periodic module as a package and as TorchScript, and its example."""
    positions = jittered_lattice(3, 0.3, np.random.default_rng(7), jitter_nm=0.04)  # 27 atoms
    folder = tmp_path_factory.mktemp("aoti")
    options = dict(kind="cv", length_unit="nm", periodic=True, example_positions=positions,
                   example_box=BOX)
    package = export_model(DensePairCVs(2, seed=3), folder / "cvs.pt2", format="aoti", **options)
    script = export_model(DensePairCVs(2, seed=3), folder / "cvs.pt", **options)
    return package, script, positions


def _force(model, hills=True):
    force = TorchCVForce(model, ENERGY, global_parameters=PARAMETERS)
    for name in PARAMETERS:
        force.addEnergyParameterDerivative(name)
    if hills:
        force.setHillsVariables([0, 1], [0.05, 0.1], [0.0, 2 * math.pi])
        for h in range(6):
            force.addHill([0.01 * h - 0.02, 0.3 * h - 1.0], 0.5 + 0.1 * h)
    return force


def test_package_is_self_describing(case):
    package, script, _ = case
    assert package.backend == "aoti" and script.backend == "torchscript"
    assert read_metadata(package.source) == package.metadata
    assert package.metadata.n_atoms == 27 and package.metadata.periodic
    loaded = ExportedModel.load(package.source, allow_package=True)
    assert loaded.backend == "aoti" and loaded.data == package.data
    force = TorchCVForce(package.source, "cv0")
    assert force.getBackend() == TorchCVForce.AOTInductor
    assert force.usesPeriodicBoundaryConditions() and force.cv_names == ["cv0", "cv1"]
    assert TorchCVForce(script, "cv0").getBackend() == TorchCVForce.TorchScript


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_equals_torchscript_backend(case, platform):
    """Energy (expression + Gaussian hills), forces, CVs and parameter derivatives."""
    package, script, positions = case
    ours, theirs = _force(package), _force(script)
    ctx_ours = _context([ours], 27, BOX, platform)
    ctx_theirs = _context([theirs], 27, BOX, platform)
    moved = positions + np.random.default_rng(1).normal(scale=0.02, size=positions.shape)
    for x in (positions, moved):
        e1, f1, d1 = _state(ctx_ours, x)
        e2, f2, d2 = _state(ctx_theirs, x)
        assert np.abs(f2).max() > 1e-2
        assert e1 == pytest.approx(e2, rel=1e-10, abs=1e-10)
        np.testing.assert_allclose(f1, f2, rtol=1e-10, atol=1e-10 * np.abs(f2).max())
        np.testing.assert_allclose(ours.getCollectiveVariableValues(ctx_ours),
                                   theirs.getCollectiveVariableValues(ctx_theirs),
                                   rtol=1e-12, atol=1e-12)
        for name in PARAMETERS:
            assert d1[name] == pytest.approx(d2[name], rel=1e-10, abs=1e-12)
    # new hills reach the Context the same way (metadynamics deposits)
    for force, context in ((ours, ctx_ours), (theirs, ctx_theirs)):
        force.addHill(list(force.getCollectiveVariableValues(context)), 1.5)
        force.updateParametersInContext(context)
    e1, f1, _ = _state(ctx_ours, moved)
    e2, f2, _ = _state(ctx_theirs, moved)
    assert ours.getNumHills() == 7
    assert e1 == pytest.approx(e2, rel=1e-10, abs=1e-10)
    np.testing.assert_allclose(f1, f2, rtol=1e-10, atol=1e-10 * np.abs(f2).max())


def test_forces_match_finite_differences(case):
    package, _, positions = case
    context = _context([_force(package)], 27, BOX)
    _, forces, _ = _state(context, positions)
    components = [(0, 0), (5, 1), (13, 2), (26, 0)]
    for (atom, axis), fd in zip(components, central_difference_forces(context, positions,
                                                                      components)):
        assert fd == pytest.approx(forces[atom, axis], rel=1e-5, abs=1e-6)


def test_cv_values_follow_the_positions(case):
    package, script, positions = case
    ours, theirs = _force(package, hills=False), _force(script, hills=False)
    ctx_ours, ctx_theirs = _context([ours], 27, BOX), _context([theirs], 27, BOX)
    for x in (positions, positions * 1.01):  # no force evaluation in between: run the package
        ctx_ours.setPositions(x)
        ctx_theirs.setPositions(x)
        np.testing.assert_allclose(ours.getCollectiveVariableValues(ctx_ours),
                                   theirs.getCollectiveVariableValues(ctx_theirs),
                                   rtol=1e-12, atol=1e-12)
    before = ours.getCollectiveVariableValues(ctx_ours)
    ctx_ours.getState(getEnergy=True, getForces=True)
    assert ours.getCollectiveVariableValues(ctx_ours) == before


def test_xml_round_trip_keeps_the_backend(case):
    package, script, positions = case
    system = openmm.System()
    for _ in range(27):
        system.addParticle(12.0)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in BOX])
    system.addForce(_force(package))
    xml = openmm.XmlSerializer.serialize(system)
    assert 'version="4"' in xml and 'backend="1"' in xml
    copy = openmm.XmlSerializer.deserialize(xml)
    force = TorchCVForce.cast(copy.getForce(0))
    assert force.getBackend() == TorchCVForce.AOTInductor and force.getNumHills() == 6
    energies = []
    for s in (system, copy):
        context = openmm.Context(s, openmm.VerletIntegrator(0.001),
                                 openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(positions)
        energies.append(context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ))
    assert energies[0] == energies[1] and energies[0] != 0.0

    # a version-3 file (before backends) holds TorchScript and still loads
    old = openmm.XmlSerializer.serialize(_force(script))
    old = old.replace('version="4"', 'version="3"').replace(' backend="0"', "")
    assert "backend" not in old
    assert TorchCVForce.cast(openmm.XmlSerializer.deserialize(old)).getBackend() == \
        TorchCVForce.TorchScript


def test_clear_errors(case, tmp_path):
    package, _, positions = case
    # a package is compiled for one atom count: refused when the Context is created
    with pytest.raises(openmm.OpenMMException,
                       match="compiled for 27 atoms but the force passes 30 particles"):
        _context([TorchCVForce(package, "cv0")], 30, BOX)
    with pytest.raises(openmm.OpenMMException, match="compiled for a periodic model"):
        _context([plugin.TorchCVForce(package.data, "cv0", ["cv0", "cv1"],
                                      plugin.TorchCVForce.AOTInductor)], 27, None)
    with pytest.raises(openmm.OpenMMException, match="computes 2 collective variables but the "
                       "force declares 1"):
        force = plugin.TorchCVForce(package.data, "cv0", ["cv0"], plugin.TorchCVForce.AOTInductor)
        force.setUsesPeriodicBoundaryConditions(True)
        _context([force], 27, BOX)
    with pytest.raises(openmm.OpenMMException, match="not a loadable AOTInductor package"):
        _context([plugin.TorchCVForce(b"junk", "cv0", ["cv0"], plugin.TorchCVForce.AOTInductor)],
                 27, None)
    with pytest.raises(openmm.OpenMMException, match="unknown backend 2"):
        plugin.TorchCVForce(package.data, "cv0", ["cv0"], 2)
    context = _context([TorchCVForce(package, "cv0")], 27, BOX)
    bad = positions.copy()
    bad[4, 1] = np.nan
    context.setPositions(bad)
    with pytest.raises(openmm.OpenMMException, match="positions contain NaN/inf values"):
        context.getState(getEnergy=True)
    # only TorchCVForce runs a package; everything else says so
    with pytest.raises(ModelFileError, match="AOTInductor package .* only .*TorchCVForce"):
        ExportedModel.load(package.source)
    with pytest.raises(ValueError, match="contradicts the model"):
        TorchCVForce(package, "cv0", periodic=False)
    (tmp_path / "junk.pt2").write_bytes(b"not a package")
    with pytest.raises(ModelFileError, match="not a zip archive"):
        TorchCVForce(tmp_path / "junk.pt2", "cv0")


def test_export_refuses_what_cannot_be_packaged(tmp_path):
    positions = jittered_lattice(2, 0.3, np.random.default_rng(0), jitter_nm=0.04)

    class Branching(torch.nn.Module):
        def forward(self, positions):
            if bool((positions[:, 0] > -10.0).all()):  # a branch on values: not traceable
                return positions[:2, 0]
            return positions[:2, 1]

    with pytest.raises(ExportError, match="data-dependent|branch on tensor values"):
        export_model(Branching(), tmp_path / "b.pt2", kind="cv", length_unit="nm",
                     periodic=False, example_positions=positions, format="aoti")
    assert not (tmp_path / "b.pt2").exists()
    with pytest.raises(ValueError, match="packages CV modules"):
        export_model(DensePairCVs(1, 0), tmp_path / "p.pt2", kind="potential",
                     length_unit="nm", energy_unit="kJ/mol", periodic=False,
                     example_positions=positions, format="aoti")
    with pytest.raises(ValueError, match="format must be one of"):
        export_model(DensePairCVs(1, 0), tmp_path / "p.pt2", kind="cv", length_unit="nm",
                     periodic=False, example_positions=positions, format="onnx")


@pytest.mark.slow
def test_dihedrals_of_alanine_dipeptide(tmp_path):
    """The phi/psi Dihedrals of capped alanine (non-periodic, a real molecule) as a package:
    the same energies and forces as TorchScript on Reference and CPU."""
    import openmm.app as app

    from openmm_geom.data import bundled
    from openmm_geom.models import Dihedrals, backbone_quadruplets

    pdb = app.PDBFile(str(bundled("alanine-dipeptide.pdb")))
    quads = backbone_quadruplets(pdb.topology)
    positions = np.array(pdb.positions.value_in_unit(unit.nanometer))
    positions += np.random.default_rng(2).normal(scale=0.01, size=positions.shape)
    options = dict(kind="cv", length_unit="nm", periodic=False, example_positions=positions,
                   cv_names=["phi", "psi"])
    package = export_model(Dihedrals(quads), tmp_path / "d.pt2", format="aoti", **options)
    script = export_model(Dihedrals(quads), tmp_path / "d.pt", **options)
    energy = "2*(1+cos(phi+1.2)) + 3*sin(psi)^2"
    for platform in ("Reference", "CPU"):
        e1, f1, _ = _state(_context([TorchCVForce(package, energy)], 22, None, platform),
                           positions)
        e2, f2, _ = _state(_context([TorchCVForce(script, energy)], 22, None, platform),
                           positions)
        assert e1 == pytest.approx(e2, rel=1e-10, abs=1e-10)
        np.testing.assert_allclose(f1, f2, rtol=1e-10, atol=1e-10 * np.abs(f2).max())


def test_restraints_and_metadynamics_take_a_package(case):
    """The biasing front ends (restraints, metadynamics, OPES) build their TorchCVForce from a
    package as from TorchScript."""
    from openmm_geom.openmm import OPES, GridAxis, Metadynamics, restraint_force

    package, script, positions = case
    energies = []
    for model in (package, script):
        system = openmm.System()
        for _ in range(27):
            system.addParticle(12.0)
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in BOX])
        system.addForce(restraint_force(model, {"cv0": (40.0, 0.1)}))
        axes = [GridAxis("cv0", -1.0, 1.0, 0.05), GridAxis("cv1", -math.pi, math.pi, 0.3, True)]
        meta = Metadynamics(system, model, axes, 300.0, height=1.0, bias_factor=5.0,
                            frequency=10, method="hills")
        opes = OPES(system, model, 300.0, barrier=20.0, pace=10, sigma=[0.05, 0.3],
                    cvs=["cv0", "cv1"])
        context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                                 openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(positions)
        meta.deposit(context)
        context.setPositions(positions * 1.005)
        meta.deposit(context)
        for step, point in enumerate([(0.05, 0.5), (0.1, 0.6), (0.2, -1.0)]):
            opes.update_at(point, 10 * (step + 1))
        opes.force.updateParametersInContext(context)
        energies.append(_state(context, positions * 1.01)[:2])
    assert meta.force.getNumHills() == 2 and opes.force.getNumHills() >= 1
    assert energies[0][0] == pytest.approx(energies[1][0], rel=1e-10, abs=1e-10)
    np.testing.assert_allclose(energies[0][1], energies[1][1], rtol=1e-10,
                               atol=1e-10 * np.abs(energies[1][1]).max())


def test_geom2vec_cv_is_packaged(tmp_path):
    """A geom2vec CV (TorchMD-ET backbone, atom tokens, global distances, VAMP head; random
    weights) on capped alanine: the package, compiled with every atom pair instead of the
    neighbour search, gives the TorchScript file's energies and forces in a Reference Context."""
    import openmm.app as app

    from openmm_geom.data import bundled
    from openmm_geom.models.geom2vec import Geom2VecCV, Geom2VecFeaturizer, TokenCV, TokenMap
    from openmm_geom.models.heads import VAMPHead
    from openmm_geom.models.mixers import build_mixer

    pdb = app.PDBFile(str(bundled("alanine-dipeptide.pdb")))
    tokens = TokenMap.from_topology(pdb.topology, selection="heavy", tokens="atom",
                                    global_atoms="not element H")
    featurizer = Geom2VecFeaturizer("et", hidden_channels=16, num_layers=2, num_rbf=16,
                                    num_heads=4, dtype=torch.float64, seed=3)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        mixer = build_mixer("pool", 16, tokens.n_tokens, tokens.global_dim)
        token_cv = TokenCV(tokens.n_tokens, 16, tokens.global_dim, mixer,
                           VAMPHead(mixer.out_dim, hidden=16, k=2), dtype=torch.float64)
    cv = Geom2VecCV(featurizer, tokens, token_cv.double()).eval()
    positions = np.array(pdb.positions.value_in_unit(unit.nanometer))
    options = dict(kind="cv", length_unit="nm", periodic=False, example_positions=positions)
    package = export_model(cv, tmp_path / "g.pt2", format="aoti", **options)
    script = export_model(cv, tmp_path / "g.pt", **options)
    assert cv.featurizer.backbone.net.distance.every_pair is False  # the caller's is untouched
    energy = "3*(cv0-0.2)^2 + 2*sin(cv1)"
    contexts = [_context([TorchCVForce(m, energy)], 22, None, "Reference")
                for m in (package, script)]
    moved = positions + np.random.default_rng(3).normal(scale=0.02, size=positions.shape)
    for x in (positions, moved):
        (e1, f1, _), (e2, f2, _) = (_state(c, x) for c in contexts)
        assert np.abs(f2).max() > 1e-3
        assert e1 == pytest.approx(e2, rel=1e-10, abs=1e-10)
        np.testing.assert_allclose(f1, f2, rtol=1e-10, atol=1e-10 * np.abs(f2).max())
