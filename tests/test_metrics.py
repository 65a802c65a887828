import audmetric
import numpy as np
import pytest
import torch

from base.training.metrics import ccc, ccc_centering, ccc_loss, evaluate_partition, pearson, rmse


def test_ccc_by_hand():
    assert ccc([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert ccc([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # cov = 2/3, var = 2/3 each, mean difference 1
    assert ccc([1, 2, 3], [2, 3, 4]) == pytest.approx(2 * (2 / 3) / (2 / 3 + 2 / 3 + 1))
    # x = [0, 2], y = [0, 0]: cov 0 -> 0
    assert ccc([0, 2], [0, 0]) == 0.0


def test_ccc_undefined_cases_are_zero():
    assert ccc([1, 1, 1], [1, 1, 1]) == 0.0
    assert ccc([1], [1]) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_ccc_matches_audmetric(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=50)
    y = 0.5 * x + rng.normal(0.3, 0.8, size=50)
    assert ccc(x, y) == pytest.approx(audmetric.concordance_cc(y, x), abs=1e-9)


def test_pearson_and_rmse_by_hand():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0
    assert rmse([0, 0, 0, 0], [1, -1, 1, -1]) == pytest.approx(1.0)
    assert rmse([1, 2], [1, 4]) == pytest.approx(np.sqrt(2))


def test_length_mismatch():
    with pytest.raises(ValueError, match="differ in length: 2 vs 3"):
        ccc([1, 2], [1, 2, 3])


def test_evaluate_partition_concatenates_trials():
    rng = np.random.default_rng(0)
    labels = {"a": rng.uniform(-1, 1, (20, 2)), "b": rng.uniform(-1, 1, (15, 2))}  # columns: arousal, valence
    preds = {t: v * 0.5 + 0.1 for t, v in labels.items()}
    preds["b"][:, 1] = rng.uniform(-1, 1, 15)
    result = evaluate_partition(preds, labels, ("arousal", "valence"))
    arousal_truth = np.concatenate([labels["a"][:, 0], labels["b"][:, 0]])
    arousal_pred = np.concatenate([preds["a"][:, 0], preds["b"][:, 0]])
    assert result["arousal"]["ccc"] == pytest.approx(ccc(arousal_pred, arousal_truth))
    assert result["arousal"]["pcc"] == pytest.approx(1.0)
    assert result["valence"]["rmse"] == pytest.approx(rmse(np.concatenate([preds["a"][:, 1], preds["b"][:, 1]]),
                                                           np.concatenate([labels["a"][:, 1], labels["b"][:, 1]])))
    assert result["per_trial"]["b"]["valence"]["ccc"] == pytest.approx(ccc(preds["b"][:, 1], labels["b"][:, 1]))
    assert result["per_trial"]["a"]["valence"]["pcc"] == pytest.approx(1.0)
    assert set(result) == {"arousal", "valence", "per_trial"}


def test_evaluate_partition_single_emotion_picks_label_column():
    labels = {"a": np.array([[0.1, 0.9], [0.2, 0.5], [0.3, 0.1]])}
    result = evaluate_partition({"a": np.array([[0.9], [0.5], [0.1]])}, labels, ("arousal",))
    assert result["arousal"]["ccc"] == pytest.approx(1.0)
    result = evaluate_partition({"a": np.array([0.1, 0.2, 0.3])}, labels, ("valence",))
    assert result["valence"]["rmse"] == pytest.approx(0.0)


def test_evaluate_partition_mismatch():
    with pytest.raises(ValueError, match="trial a: 2 predictions for 3 labels"):
        evaluate_partition({"a": np.zeros((2, 1))}, {"a": np.zeros((3, 2))}, ("valence",))
    with pytest.raises(ValueError, match=r"labels have 3 columns for emotions \('valence',\)"):
        evaluate_partition({"a": np.zeros((2, 1))}, {"a": np.zeros((2, 3))}, ("valence",))
    with pytest.raises(ValueError, match="no labels"):
        evaluate_partition({"a": np.zeros((2, 1))}, {}, ("valence",))


def test_ccc_loss_masked_equals_numpy_ccc_of_valid_part():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(3, 10))
    target = rng.normal(size=(3, 10))
    lengths = [10, 6, 3]
    mask = np.arange(10)[None, :] < np.array(lengths)[:, None]
    loss = ccc_loss(torch.tensor(pred), torch.tensor(target), torch.tensor(mask))
    expected = np.mean([1 - ccc(pred[i, :n], target[i, :n]) for i, n in enumerate(lengths)])
    assert loss.item() == pytest.approx(expected, abs=1e-7)
    garbage = pred.copy()
    garbage[~mask] = 1e6  # padding must not matter
    assert ccc_loss(torch.tensor(garbage), torch.tensor(target), torch.tensor(mask)).item() == pytest.approx(loss.item())


def test_ccc_loss_perfect_prediction_and_default_mask():
    target = torch.stack([torch.linspace(-1, 1, 10), torch.linspace(0.5, -0.5, 10)])  # zero mean windows
    assert ccc_loss(target.clone(), target).item() == pytest.approx(0.0, abs=1e-6)
    assert ccc_loss(-target, target).item() == pytest.approx(2.0, abs=1e-6)


def test_ccc_loss_skips_windows_without_valid_frames():
    pred, target = torch.randn(2, 5), torch.randn(2, 5)
    mask = torch.tensor([[True] * 5, [False] * 5])
    assert ccc_loss(pred, target, mask).item() == pytest.approx(ccc_loss(pred[:1], target[:1]).item())
    empty = ccc_loss(pred.requires_grad_(), target, torch.zeros(2, 5, dtype=torch.bool))
    assert empty.item() == 0.0
    empty.backward()


def test_ccc_loss_gradient_finite_for_constant_prediction():
    pred = torch.zeros(2, 8, requires_grad=True)
    target = torch.stack([torch.linspace(-1, 1, 8), torch.zeros(8)])  # second window: constant and equal
    loss = ccc_loss(pred, target, torch.ones(2, 8, dtype=torch.bool))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum() > 0


def test_ccc_centering_one_fold_is_identity():
    p = np.array([[0.1, 0.5, -0.2]])
    np.testing.assert_array_equal(ccc_centering(p), p[0])


def test_ccc_centering_two_folds_is_the_plain_mean():
    # both weights equal CCC(p0, p1) -> weighted mean of means = plain mean of means
    p = np.array([[1.0, 2.0, 3.0], [2.0, 3.0, 4.0]])
    np.testing.assert_allclose(ccc_centering(p), [1.5, 2.5, 3.5])


def test_ccc_centering_three_folds_by_hand():
    p = np.array([[1.0, 2.0, 3.0],    # mean 2
                  [2.0, 3.0, 4.0],    # mean 3
                  [3.0, 2.0, 1.0]])   # mean 2
    # CCC(p0, p1) = 4/7 (hand value of test_ccc_by_hand), CCC(p0, p2) = -1,
    # CCC(p1, p2) = 2 (-2/3) / (2/3 + 2/3 + 1) = -4/7
    # w0 = max(0, (4/7 - 1) / 2) = 0, w1 = max(0, (4/7 - 4/7) / 2) = 0, w2 = max(0, (-1 - 4/7) / 2) = 0
    # all weights 0 -> plain mean of the means = 7/3
    centred = np.array([[-1, 0, 1], [-1, 0, 1], [1, 0, -1]]).mean(axis=0)  # [-1/3, 0, 1/3]
    np.testing.assert_allclose(ccc_centering(p), centred + 7 / 3)


def test_ccc_centering_three_folds_weighted_by_hand():
    p = np.array([[0.0, 1.0, 2.0],    # mean 1, var 2/3
                  [1.0, 2.0, 3.0],    # mean 2
                  [0.0, 2.0, 4.0]])   # mean 2, var 8/3
    # CCC(p0, p1) = (4/3) / (4/3 + 1) = 4/7
    # CCC(p0, p2) = 2 (4/3) / (2/3 + 8/3 + 1) = 8/13
    # CCC(p1, p2) = 2 (4/3) / (2/3 + 8/3 + 0) = 4/5
    w = np.array([(4 / 7 + 8 / 13) / 2, (4 / 7 + 4 / 5) / 2, (8 / 13 + 4 / 5) / 2])
    weighted_mean = (w[0] * 1 + w[1] * 2 + w[2] * 2) / w.sum()
    centred = np.array([[-1, 0, 1], [-1, 0, 1], [-2, 0, 2]]).mean(axis=0)  # [-4/3, 0, 4/3]
    fused = ccc_centering(p)
    np.testing.assert_allclose(fused, centred + weighted_mean)
    assert fused.mean() == pytest.approx(weighted_mean)


def test_ccc_centering_clip_and_shape_check():
    p = np.array([[0.0, 2.0], [0.0, 2.0], [0.0, 2.0]])
    np.testing.assert_allclose(ccc_centering(p, clip=(-1, 1)), [0.0, 1.0])
    with pytest.raises(ValueError, match=r"expected \(K, N\)"):
        ccc_centering(np.zeros(3))
