"""The native extension, `openmm-geom doctor` and unit conversions."""
import json
import subprocess
import sys

import openmm
import pytest
import torch

import openmm_geom
from openmm_geom import units


def test_native_extension_is_built_against_the_running_stack():
    from openmm_geom import _native

    info = openmm_geom.native_build_info()
    assert info["built_against_torch"] == torch.__version__
    assert info["openmm_runtime_version"] == openmm.Platform.getOpenMMVersion()
    assert info["built_against_openmm"].split(".")[:2] == openmm.__version__.split(".")[:2]
    assert _native.torch_selftest() == 12.0  # a libtorch autograd pass run from C++


def test_doctor_json_reports_a_working_environment():
    done = subprocess.run([sys.executable, "-m", "openmm_geom.cli", "doctor", "--json"],
                          capture_output=True, text=True, timeout=600)
    report = json.loads(done.stdout)
    assert done.returncode == 0, report
    assert report["ok"] and report["native"]["ok"] and not report["known_bad"]
    assert report["problems"] == [] and report["openmm_torch"]["ok"]
    assert report["versions"]["openmm-torch"]["version"] == "1.10"
    for platform in ("Reference", "CPU"):
        checks = report["contexts"][platform]
        assert checks["TorchForce"]["status"] == "ok"
        assert checks["TorchForce in CustomCVForce"]["status"] == "ok"


def test_doctor_flags_known_bad_combinations():
    from openmm_geom.doctor import _known_bad

    def versions(**overrides):
        base = {"torch": "2.12.1", "openmm": "8.5.2", "torchmd-net": "2.6.2"}
        base.update(overrides)
        found = {k: {"distribution": k, "version": v} for k, v in base.items()}
        found["openmm-torch"] = {"distribution": overrides.get("omt", "acellera-openmmtorch-cpu"),
                                 "version": "1.10"}
        return found

    assert _known_bad(versions()) == []
    assert "segfaults" in _known_bad(versions(openmm="8.6.1"))[0]
    assert "ABI mismatch" in _known_bad(versions(torch="2.13.0+cpu"))[0]
    assert "setuptools" in _known_bad(versions(**{"torchmd-net": "3.0.1"}))[0]
    assert "CUDA 12" in _known_bad(versions(omt="openmmtorch"))[0]


@pytest.mark.parametrize("name, factor", [
    ("nm", 1.0), ("Å", 0.1), ("angstrom", 0.1), ("bohr", 0.0529177210903), ("pm", 0.001)])
def test_length_units(name, factor):
    assert units.length_to_nm(name) == pytest.approx(factor, rel=1e-12)


@pytest.mark.parametrize("name, factor", [
    ("kJ/mol", 1.0), ("kcal/mol", 4.184), ("eV", 96.48533212331),
    ("hartree", 2625.4996394799), ("meV", 0.09648533212331)])
def test_energy_units(name, factor):
    assert units.energy_to_kj_per_mol(name) == pytest.approx(factor, rel=1e-10)


def test_openmm_units_map_to_names_and_factors():
    import openmm.unit as u

    assert units.canonical_length_unit(u.angstrom) == "angstrom"
    assert units.energy_to_kj_per_mol(u.kilocalorie_per_mole) == pytest.approx(4.184)
    assert units.energy_to_kj_per_mol(u.joule) == pytest.approx(6.02214076e20)
    with pytest.raises(ValueError, match="is not an energy unit"):
        units.energy_to_kj_per_mol(u.nanometer)
    assert units.kT_kj_per_mol(300) == pytest.approx(2.494338785, rel=1e-8)
