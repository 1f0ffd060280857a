"""cv_resolution against CVs whose resolution length is known in closed form."""
import numpy as np
import pytest
import torch

from openmm_geom.analysis.cv_quality import cv_resolution


def _frames(n=400, atoms=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 0.3, (n, atoms, 3))


def test_a_scaled_coordinate_resolves_its_own_spread():
    """s = a x_0: std a std(x_0), gradient a on atom 0 only -> resolution std(x_0) for any a."""
    x = _frames()
    for a in (0.01, 7.0):
        got = cv_resolution(lambda p: a * p[:, 0, :1], x)
        assert got == pytest.approx([x[:, 0, 0].std()], rel=1e-12)


def test_a_distance_and_a_sum_of_many_atoms():
    """|r_1 - r_0| has a unit gradient on both atoms -> its std. The sum of n atoms' x has
    gradient 1 on each: std(sum) = sqrt(n) std(x) for independent atoms, resolution the same."""
    x = _frames(n=2000)
    distance = cv_resolution(lambda p: (p[:, 1] - p[:, 0]).norm(dim=-1, keepdim=True), x)
    assert distance == pytest.approx([np.linalg.norm(x[:, 1] - x[:, 0], axis=-1).std()],
                                     rel=1e-12)
    both = cv_resolution(lambda p: torch.stack((p[:, :, 0].sum(1), 3.0 * p[:, 2, 1]), 1), x,
                         batch_size=7)
    assert both == pytest.approx([x[:, :, 0].sum(1).std(), x[:, 2, 1].std()], rel=1e-12)


def test_a_rough_cv_has_a_short_resolution():
    """Adding a fast ripple of small amplitude barely changes the spread but multiplies the
    gradient: the resolution length drops by the ripple's steepness."""
    x = _frames(n=1000)
    smooth = cv_resolution(lambda p: p[:, 0, :1], x)[0]
    rough = cv_resolution(lambda p: p[:, 0, :1] + 0.01 * torch.sin(1000.0 * p[:, 0, :1]), x)[0]
    assert rough < smooth / 5


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="frames >= 2"):
        cv_resolution(lambda p: p[:, 0, :1], np.zeros((1, 3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        cv_resolution(lambda p: p[:, 0, :1], np.full((3, 3, 3), np.nan))
    with pytest.raises(ValueError, match=r"\(frames, k\)"):
        cv_resolution(lambda p: p[:, 0, 0], _frames(n=4))
