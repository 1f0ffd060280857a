"""PNG figures in the style of the CGSchNet paper (Figs. 4, 5 and 7).

Every function draws on its own :class:`matplotlib.figure.Figure` with the Agg canvas (no
pyplot, no global backend state), writes a PNG to ``path`` atomically with
:func:`save_figure` (:func:`openmm_geom.io.save_figure`; creating parent directories) and
returns ``path`` as a :class:`pathlib.Path`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from ..io import save_figure
from .free_energy import (
    NoiseCurve,
    bin_edges,
    free_energy_surface,
    noise_equivalent_sigma,
)

__all__ = ["save_figure", "plot_free_energy_surfaces", "plot_noise_curve", "plot_tica_free_energy",
           "plot_learning_curves", "plot_classification_curves", "plot_method_comparison",
           "plot_pareto", "plot_learning_curve_comparison"]

PathLike = Union[str, Path]
_CMAP = "nipy_spectral"


def _finite_max(arrays) -> float:
    values = [a[np.isfinite(a)] for a in arrays]
    values = [v for v in values if v.size]
    return float(max(v.max() for v in values)) if values else 1.0


def plot_free_energy_surfaces(
    histograms: Mapping[str, np.ndarray],
    path: PathLike,
    kT: float,
    reference: Optional[str] = None,
    fmax: Optional[float] = None,
    dpi: int = 120,
) -> Path:
    """Fig. 4: 2D (phi, psi) free-energy surfaces side by side plus 1D phi and psi profiles.

    Parameters
    ----------
    histograms : mapping of label to numpy.ndarray (bins, bins)
        Periodic (phi, psi) counts from :func:`~openmm_geom.analysis.ramachandran_histogram`,
        one column per entry, in order.
    path : str or Path
        Output PNG.
    kT : float
        Thermal energy, kJ/mol (free energies are ``-kT ln p``, minimum 0 per dataset).
    reference : str, optional
        Label of the reference dataset, shaded in every 1D panel; default the first entry.
    fmax : float, optional
        Top of the shared colour scale and 1D axes (kJ/mol); default the largest finite value.
    dpi : int, default 120

    Returns
    -------
    pathlib.Path
    """
    if not histograms:
        raise ValueError("no histograms given")
    labels = list(histograms)
    reference = labels[0] if reference is None else reference
    if reference not in histograms:
        raise KeyError(f"reference {reference!r} is not one of {labels}")
    counts = {k: np.asarray(v, dtype=np.float64) for k, v in histograms.items()}
    bins = counts[labels[0]].shape[0]
    for label, c in counts.items():
        if c.shape != (bins, bins):
            raise ValueError(f"histogram {label!r} has shape {c.shape}, expected {(bins, bins)}")
    surfaces = {k: free_energy_surface(c, kT) for k, c in counts.items()}
    # 1D profiles from the marginals: axis 0 of the histogram is phi, axis 1 is psi.
    profiles = {
        k: (free_energy_surface(c.sum(axis=1), kT), free_energy_surface(c.sum(axis=0), kT))
        for k, c in counts.items()
    }
    top = fmax if fmax is not None else _finite_max(surfaces.values())
    edges = bin_edges(bins)
    centres = 0.5 * (edges[1:] + edges[:-1])

    n = len(labels)
    fig = Figure(figsize=(3.0 * n + 0.8, 8.4), layout="constrained")
    axes = fig.subplots(3, n, squeeze=False)
    image = None
    for col, label in enumerate(labels):
        ax = axes[0, col]
        surface = np.ma.masked_invalid(surfaces[label].T)  # rows = psi for imshow
        image = ax.imshow(surface, origin="lower", extent=(-math.pi, math.pi, -math.pi, math.pi),
                          cmap=_CMAP, vmin=0.0, vmax=top, interpolation="nearest", aspect="equal")
        ax.set_title(label)
        ax.set_xlabel(r"$\phi$ (rad)")
        if col == 0:
            ax.set_ylabel(r"$\psi$ (rad)")
        for row, name in ((1, r"$\phi$"), (2, r"$\psi$")):
            ax = axes[row, col]
            ref_profile = profiles[reference][row - 1]
            finite = np.isfinite(ref_profile)
            ax.fill_between(centres, 0.0, np.where(finite, ref_profile, np.nan), color="0.75",
                            step="mid", label=reference)
            ax.plot(centres, np.where(np.isfinite(profiles[label][row - 1]),
                                      profiles[label][row - 1], np.nan),
                    color="k", lw=1.6, drawstyle="steps-mid", label=label)
            ax.set_ylim(0.0, 1.05 * _finite_max([p[row - 1] for p in profiles.values()]))
            ax.set_xlabel(f"{name} (rad)")
            if col == 0:
                ax.set_ylabel(f"F({name}) (kJ/mol)")
        axes[1, col].legend(fontsize=7, loc="upper right")
    for ax in axes.ravel():
        ax.set_xlim(-math.pi, math.pi)
    fig.colorbar(image, ax=axes[0, :].tolist(), label="F (kJ/mol)", shrink=0.9)
    return save_figure(fig, path, dpi)


def plot_noise_curve(
    curve: NoiseCurve,
    path: PathLike,
    cg_kl=None,
    cg_mse=None,
    label: str = "CG",
    show_realisations: bool = True,
    dpi: int = 120,
) -> Path:
    """Fig. 5: KL divergence and MSE versus noise sigma, with a CG run's values.

    Parameters
    ----------
    curve : NoiseCurve
        From :func:`~openmm_geom.analysis.noise_curve`.
    path : str or Path
        Output PNG.
    cg_kl : float or KLResult, optional
        KL(reference || CG) with the curve's empty-bin policy: drawn as a coloured horizontal
        dashed line, its noise-equivalent sigma as a black vertical dashed line.
    cg_mse : float or dict, optional
        MSE of the CG run (:func:`~openmm_geom.analysis.mse_bin_energies`), drawn likewise.
    label : str, default "CG"
        Legend label of the CG run.
    show_realisations : bool, default True
        Draw every realisation's curve thinly under the mean (the paper shows all 50).
    dpi : int, default 120

    Returns
    -------
    pathlib.Path
    """
    fig = Figure(figsize=(9.0, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    sigmas = curve.sigmas_angstrom
    panels = (
        (axes[0], curve.kl, curve.kl_mean, cg_kl, "kl", f"KL divergence ({curve.empty})"),
        (axes[1], curve.mse, curve.mse_mean, cg_mse, "mse", r"MSE (kJ/mol)$^2$"),
    )
    for ax, per_seed, mean, cg_value, metric, ylabel in panels:
        if show_realisations:
            for line in per_seed:
                ax.plot(sigmas, line, color="tab:blue", lw=0.5, alpha=0.3)
        ax.plot(sigmas, mean, color="tab:blue", lw=2.0,
                label=f"reference + noise (mean of {curve.seeds})")
        if cg_value is not None:
            value = cg_value["value"] if isinstance(cg_value, dict) else float(cg_value)
            ax.axhline(value, color="tab:purple", ls="--", label=f"{label}: {value:.3g}")
            if math.isfinite(value):
                match = noise_equivalent_sigma(cg_value, curve, metric=metric)
                bound = ">" if match.beyond_range else ""
                ax.axvline(match.sigma_angstrom, color="k", ls="--",
                           label=rf"$\sigma$ {bound}= {match.sigma_angstrom:.3f} $\AA$")
        ax.set_xlabel(r"noise $\sigma$ ($\AA$)")
        ax.set_ylabel(ylabel)
        ax.set_xlim(sigmas[0], sigmas[-1])
        ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, path, dpi)


def plot_tica_free_energy(
    projections,
    path: PathLike,
    kT: float,
    bins: int = 120,
    weights=None,
    fmax: Optional[float] = None,
    dpi: int = 120,
) -> Path:
    """Fig. 7 (top row): free energy on the first two TICA coordinates, datasets side by side.

    Parameters
    ----------
    projections : numpy.ndarray (T, >=2) or list of them, or mapping of label to those
        TICA projections (e.g. :meth:`~openmm_geom.analysis.TICA.transform`); a list of
        trajectories is concatenated. All datasets share the binning range and colour scale.
    path : str or Path
        Output PNG.
    kT : float
        Thermal energy, kJ/mol.
    bins : int, default 120
        Bins per axis (the paper uses 120).
    weights : array_like or mapping of label to array_like, optional
        Per-frame weights (e.g. MSM stationary weights, as in the paper), same layout as
        ``projections``.
    fmax : float, optional
        Top of the shared colour scale (kJ/mol).
    dpi : int, default 120

    Returns
    -------
    pathlib.Path
    """
    def stack(x):
        if isinstance(x, np.ndarray):
            return np.asarray(x, dtype=np.float64)
        return np.concatenate([np.asarray(t, dtype=np.float64) for t in x])

    datasets = dict(projections) if isinstance(projections, Mapping) else {"": projections}
    data = {k: stack(v) for k, v in datasets.items()}
    for label, x in data.items():
        if x.ndim != 2 or x.shape[1] < 2:
            raise ValueError(f"projections {label!r} must have shape (T, >=2), got {x.shape}")
    if weights is None:
        w = {k: None for k in data}
    elif isinstance(weights, Mapping):
        w = {k: stack(weights[k]).reshape(-1) for k in data}
    else:
        if len(data) != 1:
            raise ValueError("pass weights as a mapping when plotting several datasets")
        w = {next(iter(data)): stack(weights).reshape(-1)}
    both = np.concatenate([x[:, :2] for x in data.values()])
    lo, hi = both.min(axis=0), both.max(axis=0)
    pad = 1e-9 * np.maximum(hi - lo, 1.0)
    ranges = [(lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1])]
    surfaces = {}
    for label, x in data.items():
        counts, xedges, yedges = np.histogram2d(x[:, 0], x[:, 1], bins=bins, range=ranges,
                                                weights=w[label])
        surfaces[label] = free_energy_surface(counts, kT)
    top = fmax if fmax is not None else _finite_max(surfaces.values())

    n = len(data)
    fig = Figure(figsize=(3.6 * n + 0.8, 3.6), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    image = None
    for ax, (label, surface) in zip(axes, surfaces.items()):
        image = ax.pcolormesh(xedges, yedges, np.ma.masked_invalid(surface.T), cmap=_CMAP,
                              vmin=0.0, vmax=top, shading="flat")
        ax.set_title(label)
        ax.set_xlabel("TIC 1")
        ax.set_ylabel("TIC 2")
    fig.colorbar(image, ax=axes.tolist(), label="F (kJ/mol)", shrink=0.9)
    return save_figure(fig, path, dpi)


def plot_learning_curves(histories, path: PathLike, dpi: int = 120) -> Path:
    """Training and validation loss per epoch for each cross-validation fold.

    ``histories``: one dict per fold with lists ``epoch``, ``train``, ``validation``.
    """
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for fold, history in enumerate(histories):
        line, = ax.plot(history["epoch"], history["train"], "--", lw=1.2,
                        label=f"fold {fold + 1} train")
        ax.plot(history["epoch"], history["validation"], "-", lw=1.6, color=line.get_color(),
                label=f"fold {fold + 1} validation")
        best = int(np.argmin(history["validation"]))
        ax.plot(history["epoch"][best], history["validation"][best], "o", color=line.get_color())
    ax.set(xlabel="epoch", ylabel="force-matching loss ((kJ/mol/nm)$^2$)",
           title="learning curves (dots: restored best epoch)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def plot_potential_learning_curves(history: Mapping[str, list], path: PathLike,
                                   dpi: int = 120) -> Path:
    """Energy+force training: loss per epoch (left) and validation errors (right axis).

    ``history`` has lists ``epoch``, ``train_loss``, ``validation_force_mae`` (kJ/mol/nm) and
    ``validation_energy_mae_per_atom`` (kJ/mol), as written by ``train_potential``.
    """
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    epochs = history["epoch"]
    ax.plot(epochs, history["train_loss"], "--", color="0.3", label="training loss")
    ax.set(xlabel="epoch", ylabel="training loss (dimensionless)", yscale="log")
    right = ax.twinx()
    right.plot(epochs, history["validation_force_mae"], "-o", ms=3, color="C0",
               label="validation force MAE (kJ/mol/nm)")
    right.plot(epochs, np.asarray(history["validation_energy_mae_per_atom"]) * 100, "-s", ms=3,
               color="C1", label="validation energy MAE x100 (kJ/mol/atom, mean error removed)")
    best = int(np.argmin(history["validation_force_mae"]))
    right.plot(epochs[best], history["validation_force_mae"][best], "*", ms=12, color="C3",
               label="restored best epoch")
    right.set(ylabel="validation error")
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7)
    ax.set_title("energy+force training")
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def plot_classification_curves(histories: Mapping[str, list], path: PathLike,
                               dpi: int = 120) -> Path:
    """Validation accuracy and training loss per epoch, mean over folds, for each method.

    ``histories``: method -> list (one per fold) of dicts with ``epoch``, ``train_loss`` and
    ``validation_accuracy`` lists (methods without epochs, e.g. an SVM, pass None entries).
    """
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for method, folds in histories.items():
        folds = [h for h in folds if h]
        if not folds:
            continue
        length = min(len(h["epoch"]) for h in folds)
        epochs = folds[0]["epoch"][:length]
        loss = np.mean([h["train_loss"][:length] for h in folds], axis=0)
        accuracy = np.mean([h["validation_accuracy"][:length] for h in folds], axis=0)
        line, = ax_loss.plot(epochs, loss, lw=1.5, label=method)
        ax_acc.plot(epochs, 100 * accuracy, lw=1.5, color=line.get_color(), label=method)
    ax_loss.set(xlabel="epoch", ylabel="training loss (eq. 12)", yscale="log",
                title="training loss, mean over folds")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)",
               title="validation accuracy, mean over folds")
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def plot_method_comparison(results: Mapping[str, dict], path: PathLike, dpi: int = 120) -> Path:
    """Bars of test accuracy and recall (mean +- std over folds) per method."""
    methods = list(results)
    fig = Figure(figsize=(max(5.0, 1.3 * len(methods) + 2), 4))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(methods))
    for offset, metric in ((-0.2, "accuracy"), (0.2, "recall")):
        means = [100 * results[m]["test"][metric]["mean"] for m in methods]
        stds = [100 * results[m]["test"][metric]["std"] for m in methods]
        ax.bar(x + offset, means, 0.4, yerr=stds, capsize=3, label=f"test {metric}")
    ax.set_xticks(x)
    ax.set_xticklabels(methods, rotation=20, fontsize=8)
    ax.set(ylabel="%", ylim=(0, 105), title="independent test set, mean over CV folds")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path, dpi)


_ARCHITECTURE_STYLE = {"attention": ("C0", "o"), "et": ("C3", "s"), "tensornet": ("C2", "^")}


def plot_pareto(models, path: PathLike, dpi: int = 120) -> Path:
    """Test force MAE against OpenMM steps/s, one panel per box size (rows) and thread count
    (columns).

    ``models``: entries of ``potential pareto``'s summary, each with ``architecture``,
    ``size``, ``force_mae`` (mean over seeds), ``force_mae_seeds`` and
    ``steps_per_second_openmm`` (box target -> thread count -> steps/s, None if the timing
    failed).
    """
    targets = list(models[0]["steps_per_second_openmm"])
    threads = list(models[0]["steps_per_second_openmm"][targets[0]])
    fig = Figure(figsize=(4.2 * len(threads), 3.6 * len(targets)))
    for row, target in enumerate(targets):
        for col, t in enumerate(threads):
            ax = fig.add_subplot(len(targets), len(threads), row * len(threads) + col + 1)
            for architecture in dict.fromkeys(m["architecture"] for m in models):
                # a model whose timing failed (e.g. out of memory) has no point in that panel
                mine = [m for m in models if m["architecture"] == architecture
                        and m["steps_per_second_openmm"][target][t] is not None]
                if not mine:
                    continue
                color, marker = _ARCHITECTURE_STYLE.get(architecture, ("0.3", "x"))
                x = [m["steps_per_second_openmm"][target][t] for m in mine]
                y = [m["force_mae"] for m in mine]
                low = [m["force_mae"] - min(m["force_mae_seeds"]) for m in mine]
                high = [max(m["force_mae_seeds"]) - m["force_mae"] for m in mine]
                ax.errorbar(x, y, yerr=[low, high], color=color, marker=marker, ls="-",
                            capsize=3, label=architecture)
                for m, xi, yi in zip(mine, x, y):
                    ax.annotate(m["size"], (xi, yi), textcoords="offset points", xytext=(4, 4),
                                fontsize=7, color=color)
            maes = [m["force_mae"] for m in models]
            ax.set(xscale="log", yscale="log" if max(maes) > 3 * min(maes) else "linear",
                   xlabel="OpenMM steps/s (higher is faster)",
                   ylabel="test force MAE (kJ/mol/nm)",
                   title=f"~{target} atoms, {t} thread{'s' if t != '1' else ''}")
            for axis in (ax.xaxis, ax.yaxis):
                # labels at 1, 2, 3, 5 x 10^k: a range within one decade still gets some
                axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
                axis.set_major_formatter(ScalarFormatter())
                axis.set_minor_formatter(NullFormatter())
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def plot_learning_curve_comparison(curves: Mapping[str, Mapping[str, list]], path: PathLike,
                                   dpi: int = 120) -> Path:
    """Validation force MAE against optimiser steps (left) and training wall time (right).

    ``curves``: run name (``<architecture>-<size>-s<seed>``) -> training history with
    ``validation_force_mae``, ``steps`` and ``training_seconds`` per epoch.
    """
    fig = Figure(figsize=(11, 4.2))
    by_steps, by_time = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    sizes = {"small": ":", "medium": "-", "large": "--"}
    for name, history in curves.items():
        if not history.get("steps"):
            continue
        parts = name.split("-")
        color, marker = _ARCHITECTURE_STYLE.get(parts[0], ("0.3", "x"))
        style = dict(color=color, ls=sizes.get(parts[1] if len(parts) > 1 else "", "-"),
                     marker=marker, ms=3, lw=1, label=name)
        by_steps.plot(history["steps"], history["validation_force_mae"], **style)
        by_time.plot(np.asarray(history["training_seconds"]) / 60,
                     history["validation_force_mae"], **style)
    by_steps.set(xlabel="optimiser steps", ylabel="validation force MAE (kJ/mol/nm)",
                 yscale="log")
    by_time.set(xlabel="training wall time (min)", yscale="log")
    for ax in (by_steps, by_time):
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    by_time.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path, dpi)
