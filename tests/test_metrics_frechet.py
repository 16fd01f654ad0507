import numpy as np
import pytest

from ls_video.metrics.frechet import feature_stats, frechet_distance, frechet_distance_of


def test_identical_sets_give_zero():
    x = np.random.default_rng(0).normal(size=(200, 16))
    assert frechet_distance_of(x, x) == pytest.approx(0.0, abs=1e-8)


def test_mean_shift_is_its_squared_norm():
    mu = np.zeros(4)
    sigma = np.diag([1.0, 2.0, 3.0, 4.0])
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    assert frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(float(shift @ shift))


def test_closed_form_for_diagonal_covariances():
    # d^2 = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2 for commuting (diagonal) covariances
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = 1.0 + float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert frechet_distance(np.zeros(3), np.diag(a), np.array([1.0, 0, 0]), np.diag(b)) == pytest.approx(expected)


def test_rotated_covariance_matches_closed_form():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    a, b = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T  # same eigenvectors
    expected = float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert frechet_distance(np.zeros(5), s1, np.zeros(5), s2) == pytest.approx(expected)


def test_sample_estimate_approaches_the_population_value():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20000, 3))
    y = rng.normal(size=(20000, 3)) * 2 + 1  # N(1, 4 I): d^2 = 3 + 3 (2 - 1)^2 = 6
    assert frechet_distance_of(x, y) == pytest.approx(6.0, rel=0.05)


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="features"):
        feature_stats(np.zeros((1, 3)))
