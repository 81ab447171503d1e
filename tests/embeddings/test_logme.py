"""LogME: the fixed point against a brute-force grid over (alpha, beta), and its behaviour on known signals."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

from embeddings.logme import label_matrix, logme, logme_from_gram, logme_many


def direct_log_evidence(features: np.ndarray, y: np.ndarray, alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """log p(y | F, alpha, beta) in closed form, with A = alpha I + beta F^T F formed and solved directly."""
    n, d = features.shape
    alpha, beta = np.meshgrid(alphas, betas, indexing="ij")
    alpha, beta = alpha.reshape(-1), beta.reshape(-1)
    gram = features.T @ features
    matrices = alpha[:, None, None] * np.eye(d) + beta[:, None, None] * gram
    m = beta[:, None] * np.linalg.solve(matrices, np.broadcast_to(features.T @ y, (len(alpha), d))[..., None])[..., 0]
    residual = ((y[None] - m @ features.T) ** 2).sum(axis=1)
    _, log_det = np.linalg.slogdet(matrices)
    values = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi) - beta / 2 * residual
              - alpha / 2 * (m * m).sum(axis=1) - log_det / 2)
    return values.reshape(len(alphas), len(betas))


def grid_maximum(features: np.ndarray, y: np.ndarray) -> float:
    """A wide log-spaced grid, then a fine one around its best point; the true maximum is at least this."""
    coarse = np.logspace(-6, 6, 97)
    values = direct_log_evidence(features, y, coarse, coarse)
    i, j = np.unravel_index(np.argmax(values), values.shape)
    assert 0 < i < len(coarse) - 1 and 0 < j < len(coarse) - 1, "the maximum must lie inside the grid"
    fine_a = np.logspace(np.log10(coarse[i - 1]), np.log10(coarse[i + 1]), 161)
    fine_b = np.logspace(np.log10(coarse[j - 1]), np.log10(coarse[j + 1]), 161)
    return float(direct_log_evidence(features, y, fine_a, fine_b).max())


def brute_force_logme(features: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean([grid_maximum(features, targets[:, c]) for c in range(targets.shape[1])]) / len(features))


def class_data(rng: np.random.Generator, n: int, d: int, classes: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, d)) * spread
    return centres[labels] + rng.normal(size=(n, d)), labels


@pytest.mark.parametrize(("n", "d", "task"), [(40, 5, "regression"), (60, 8, "classification"),
                                              (12, 20, "regression"), (15, 30, "classification")])
def test_fixed_point_matches_grid_maximum_of_closed_form_evidence(n, d, task):
    rng = np.random.default_rng(n + d)
    if task == "regression":
        features = rng.normal(size=(n, d))
        labels = features @ rng.normal(size=d) + 0.5 * rng.normal(size=n)
    else:
        features, labels = class_data(rng, n, d, 3, spread=1.0)
    regression = task == "regression"
    expected = brute_force_logme(features, label_matrix(labels, regression=regression))
    got = logme(features, labels, regression=regression)
    assert got >= expected - 1e-6  # a fixed point short of the maximum would fall below the grid
    assert got - expected < 1e-5  # and it is the grid's maximum, not some other (higher) quantity


def test_separating_features_score_above_noise_and_stronger_separation_higher():
    labels = np.random.default_rng(1).integers(0, 4, 400)
    noise, weak, strong = (logme(centres_for(labels, 32, spread), labels) for spread in (0.0, 0.5, 2.0))
    assert weak > noise + 0.05
    assert strong > weak + 0.05


def centres_for(labels: np.ndarray, d: int, spread: float) -> np.ndarray:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(labels.max() + 1, d)) * spread
    return centres[labels] + rng.normal(size=(len(labels), d))


def test_regression_signal_scores_above_shuffled_targets_single_and_multi_output():
    rng = np.random.default_rng(4)
    features = rng.normal(size=(300, 16))
    targets = features @ rng.normal(size=(16, 2)) + 0.3 * rng.normal(size=(300, 2))
    shuffled = targets[rng.permutation(300)]
    assert logme(features, targets[:, 0], regression=True) > logme(features, shuffled[:, 0], regression=True) + 0.5
    assert logme(features, targets, regression=True) > logme(features, shuffled, regression=True) + 0.5
    # Two outputs are scored column by column and averaged.
    both = logme(features, targets, regression=True)
    each = [logme(features, targets[:, c], regression=True) for c in range(2)]
    assert both == pytest.approx(np.mean(each), rel=1e-9)


@pytest.mark.parametrize(("n", "d"), [(20, 200), (500, 12), (64, 64)])
def test_degenerate_shapes_and_columns_are_finite_without_warnings(n, d):
    rng = np.random.default_rng(n * d)
    features, labels = class_data(rng, n, d, 3, spread=1.0)
    constant = features.copy()
    constant[:, 0] = 1.0
    duplicated = np.hstack([features, features[:, :3]])
    zero_column = np.hstack([features, np.zeros((n, 1))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = [logme(f, labels) for f in (features, constant, duplicated, zero_column, np.zeros((n, d)),
                                             np.ones((n, d)), 1e6 * features, 1e-6 * features)]
        values.append(logme(features, features[:, 0] * 2.0, regression=True))  # labels exactly in the span
        values.append(logme(features, np.zeros(n), regression=True))
    assert np.isfinite(values).all()
    # The evidence is maximised over alpha, so neither a zero column nor the features' scale changes it.
    assert values[3] == pytest.approx(values[0], abs=1e-6)
    assert values[6] == pytest.approx(values[0], abs=1e-6)
    assert values[7] == pytest.approx(values[0], abs=1e-6)
    # A constant feature cannot explain class labels as well as a constant-free informative one.
    assert values[4] < values[0]


def test_logme_many_equals_a_loop_of_logme_and_follows_source_order():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 80)
    stack = np.stack([centres_for(labels, 10, spread) for spread in (0.0, 0.3, 1.0, 3.0)])
    stack[0, :, 2] = 5.0  # one source with a constant column: its own eigenvalue threshold
    many = logme_many(stack, labels)
    np.testing.assert_allclose(many, [logme(f, labels) for f in stack], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(logme_many(stack[::-1], labels), many[::-1], rtol=1e-10, atol=1e-12)
    assert np.all(np.diff(many[1:]) > 0)  # more separation, higher evidence
    wide = rng.normal(size=(3, 30, 90))
    np.testing.assert_allclose(logme_many(wide, labels[:30]), [logme(f, labels[:30]) for f in wide], rtol=1e-10)
    # The Gram-matrix entry point (used by ESM-LogME) agrees with the feature one.
    targets = label_matrix(labels)
    via_gram = logme_from_gram(stack.transpose(0, 2, 1) @ stack, stack.transpose(0, 2, 1) @ targets, targets, 80)
    np.testing.assert_allclose(via_gram, many, rtol=1e-9)


def test_class_ids_are_relabelled_and_bad_inputs_rejected():
    rng = np.random.default_rng(6)
    features, labels = class_data(rng, 50, 6, 3, spread=1.0)
    assert logme(features, labels * 7 + 100) == pytest.approx(logme(features, labels), rel=1e-12)
    with pytest.raises(ValueError, match="integer ids"):
        logme(features, labels.astype(float))
    with pytest.raises(ValueError, match="labels"):
        logme(features, labels[:-1])
    nan = features.copy()
    nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        logme(nan, labels)
    with pytest.raises(ValueError, match="sources, n, d"):
        logme_many(features, labels)


def test_speed_30_sources_1000_rows_384_dims(one_torch_thread):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 4, 1000)
    stack = rng.normal(size=(30, 1000, 384)).astype(np.float32)
    stack[:, :, :4] += np.eye(4, dtype=np.float32)[labels] * np.linspace(0, 2, 30, dtype=np.float32)[:, None, None]
    logme_many(stack[:2, :100], labels[:100])  # warm up the LAPACK paths
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        scores = logme_many(stack, labels)
        timings.append(time.perf_counter() - started)
    print(f"\nlogme_many 30 x 1000 x 384 (one torch thread): best {min(timings):.2f} s of {timings}")
    assert scores.shape == (30,) and np.isfinite(scores).all()
    assert np.argmax(scores) == 29 and scores[-5:].min() > scores[:5].max()  # signal strength orders sources
