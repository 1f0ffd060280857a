"""Analysis: free-energy surfaces, KL/MSE against a reference, noise-equivalent sigma, TICA, plots.

The accuracy protocol of the CGSchNet paper (Husic et al., J. Chem. Phys. 153, 194101, 2020,
section IV.A), in numpy. Typical use for capped alanine's 6-bead CG mapping::

    from openmm_geom import analysis as A

    ref = A.ramachandran_histogram(*A.dihedrals(ref_xyz, A.ALANINE_CG_PHI_PSI).T)
    cg = A.ramachandran_histogram(*A.dihedrals(cg_xyz, A.ALANINE_CG_PHI_PSI).T)
    kl = A.kl_divergence(ref, cg)                 # eq. 14 (+ dropped-mass diagnostics)
    mse = A.mse_bin_energies(ref, cg, A.KT_300K)  # eq. 15
    curve = A.noise_curve(ref_xyz)                # Fig. 5 calibration (xyz in nm)
    sigma = A.noise_equivalent_sigma(kl, curve)   # in Angstrom

Units: positions nm, noise sigma Angstrom (as in the paper), energies kJ/mol, angles radians
in ``[-pi, pi)``. :mod:`.plots` (matplotlib) is imported on first use of a plot function.
"""
from . import free_energy, tica
from .free_energy import *  # noqa: F401,F403  (its __all__: the CGSchNet accuracy protocol)
from .tica import *  # noqa: F401,F403

_PLOTS = ("plot_free_energy_surfaces", "plot_noise_curve", "plot_tica_free_energy")

__all__ = [*free_energy.__all__, *tica.__all__, *_PLOTS, "liquid", "peptide", "plots", "protein",
           "reweight"]


def __getattr__(name):
    """Import the plotting functions lazily (matplotlib is slow to import)."""
    if name in _PLOTS:
        from . import plots

        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
