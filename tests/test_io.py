"""Files and errors: atomic writes, versioned format tags, the error hierarchy."""
import os

import numpy as np
import pytest
import torch

from openmm_geom import errors
from openmm_geom.io import (atomic_open, atomic_write_bytes, check_format, format_tag,
                            load_versioned, parse_format, read_npz, save_versioned, write_json)


def test_format_tags():
    assert format_tag("corpus", 1) == "openmm-geom/corpus/1"
    assert parse_format("openmm-geom/corpus/3") == ("corpus", 3)
    # tags written before the spelling was unified are still read
    assert parse_format("openmm-geom-corpus", version=2) == ("corpus", 2)
    assert parse_format("openmm_geom.potential/1") == ("potential", 1)
    assert parse_format("something else") is None and parse_format(None) is None
    with pytest.raises(ValueError):
        format_tag("a/b", 1)


def test_check_format_refuses_other_kinds_and_versions():
    assert check_format("openmm-geom/corpus/1", "corpus", source="c.npz") == 1
    with pytest.raises(errors.FileFormatError,
                       match=r"c.npz is not an openmm-geom 'corpus' file \(an openmm-geom "
                             r"'backbone' file; expected openmm-geom/corpus/1\)"):
        check_format("openmm-geom/backbone/1", "corpus", source="c.npz")
    with pytest.raises(errors.FileFormatError, match="no openmm-geom format tag"):
        check_format(None, "corpus", source="c.npz")
    with pytest.raises(errors.FileFormatError,
                       match="of version 2; this openmm-geom reads version 1 .*a newer"):
        check_format("openmm-geom/corpus/2", "corpus", source="c.npz")
    with pytest.raises(errors.CheckpointError):
        check_format("x", "corpus", error=errors.CheckpointError)


def test_versioned_torch_files(tmp_path):
    path = save_versioned(tmp_path / "a.pt", "thing", 1, {"w": torch.arange(3)})
    payload = load_versioned(path, "thing")
    assert payload["format"] == "openmm-geom/thing/1" and torch.equal(payload["w"], torch.arange(3))
    with pytest.raises(errors.FileFormatError, match="not an openmm-geom 'other' file"):
        load_versioned(path, "other")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_versioned(tmp_path / "missing.pt", "thing")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(errors.ModelFileError, match="junk.pt is not a thing file"):
        load_versioned(tmp_path / "junk.pt", "thing", what="thing file",
                       error=errors.ModelFileError)
    with pytest.raises(ValueError, match="reserved"):
        save_versioned(tmp_path / "b.pt", "thing", 1, {"format": "x"})


def test_atomic_writes_leave_the_old_file_or_the_new(tmp_path):
    path = tmp_path / "data.bin"
    atomic_write_bytes(path, b"old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_open(path) as handle:
            handle.write(b"half of the new")
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]  # no temporary left
    write_json(tmp_path / "sub" / "m.json", {"a": 1})  # parents are made
    assert (tmp_path / "sub" / "m.json").read_text() == '{\n  "a": 1\n}\n'
    mode = (tmp_path / "sub" / "m.json").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_read_npz_errors(tmp_path):
    np.savez(tmp_path / "ok.npz", x=np.arange(3))
    assert read_npz(tmp_path / "ok.npz", "data file")["x"].tolist() == [0, 1, 2]
    with pytest.raises(FileNotFoundError, match="data file not found"):
        read_npz(tmp_path / "missing.npz", "data file")
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(errors.FileFormatError, match="not an npz file"):
        read_npz(tmp_path / "bad.npz", "data file")


@pytest.mark.parametrize("cls, builtins", [
    (errors.FileFormatError, (ValueError,)),
    (errors.ModelFileError, (ValueError, RuntimeError)),
    (errors.TopologyMismatchError, (ValueError,)),
    (errors.ExportError, (RuntimeError,)),
    (errors.SimulationBlowUp, (RuntimeError,)),
    (errors.CheckpointError, (RuntimeError,)),
    (errors.CheckpointMismatchError, (errors.CheckpointError, ValueError)),
    (errors.OutOfDistributionError, (RuntimeError,)),
])
def test_error_hierarchy(cls, builtins):
    """One hierarchy, each class also the builtin existing ``except`` clauses catch."""
    assert issubclass(cls, errors.OpenMMGeomError)
    for builtin in builtins:
        assert issubclass(cls, builtin)
    assert cls.__module__ == "openmm_geom.errors"


def test_one_blow_up_class_everywhere():
    from openmm_geom.data import datagen
    from openmm_geom.workflows import cv_bias, potential
    from openmm_geom.simulate import langevin

    for module in (datagen, cv_bias, potential, langevin):
        assert module.SimulationBlowUp is errors.SimulationBlowUp
    blow_up = errors.SimulationBlowUp("boom", step=7)
    assert (blow_up.step, blow_up.replicas, blow_up.max_force) == (7, [], None)


def test_seed_zero_is_reproducible_in_openmm():
    """OpenMM reads a seed of 0 as "random": openmm_seed makes --seed 0 a fixed seed."""
    import openmm

    from openmm_geom.arguments import SEED_ZERO_IN_OPENMM, openmm_seed

    assert openmm_seed(0) == SEED_ZERO_IN_OPENMM and openmm_seed(7) == 7
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        openmm_seed(-1)

    def run(seed):
        system = openmm.System()
        for _ in range(3):
            system.addParticle(12.0)
        integrator = openmm.LangevinMiddleIntegrator(300.0, 1.0, 0.002)
        integrator.setRandomNumberSeed(seed)
        context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
        context.setPositions([[0, 0, 0], [1, 0, 0], [0, 1, 0]])
        context.setVelocitiesToTemperature(300.0, seed)
        integrator.step(20)
        return context.getState(getPositions=True).getPositions(asNumpy=True)._value

    np.testing.assert_array_equal(run(openmm_seed(0)), run(openmm_seed(0)))
    assert not np.array_equal(run(0), run(0))  # what a raw 0 does
