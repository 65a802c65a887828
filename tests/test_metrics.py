import audmetric
import numpy as np
import pytest
import torch

from base.training.metrics import (
    authors_ccc_loss,
    ccc,
    ccc_centering,
    ccc_loss,
    evaluate_partition,
    pearson,
    rmse,
    sample_ccc,
)


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


# ----------------------------------------------------------------------------- the authors' arithmetic


def test_sample_ccc_by_hand():
    # cov = (1/2 + 1/2) / 3 = 1/3 (divided by N); variances (N - 1): 2/2 = 1 and 0.5/2 = 0.25; means 1, 0.5
    assert sample_ccc([0, 2, 1], [0, 1, 0.5]) == pytest.approx((2 / 3) / (1 + 0.25 + 0.25))


def test_authors_loss_by_hand_with_a_padded_window():
    # window A: pred [0, 2, 1], labels [0, 1, 0.5]: CCC = (2/3) / (1 + 1/4 + 1/4) = 4/9
    # window B (last frame padding: label 0, the model's output 2 counts): pred [1, 3, 2], labels [0, 2, 0]:
    #   cov = (2/3 + 4/3 + 0) / 3 = 2/3; var_pred = 1; var_label = (4/9 + 16/9 + 4/9) / 2 = 4/3;
    #   (2 - 2/3)^2 = 16/9, so CCC = (4/3) / (37/9) = 12/37
    pred = torch.tensor([[0.0, 2.0, 1.0], [1.0, 3.0, 2.0]], dtype=torch.float64)
    labels = torch.tensor([[0.0, 1.0, 0.5], [0.0, 2.0, 0.0]], dtype=torch.float64)
    expected = ((1 - 4 / 9) + (1 - 12 / 37)) / 2
    assert authors_ccc_loss(pred, labels).item() == pytest.approx(expected, rel=1e-7)
    # masked: window B's first two frames only: cov 1, variances 2 and 2, (2 - 1)^2 = 1 -> CCC 2/5
    mask = torch.tensor([[True, True, True], [True, True, False]])
    assert authors_ccc_loss(pred, labels, mask).item() == pytest.approx(((1 - 4 / 9) + (1 - 2 / 5)) / 2, rel=1e-7)
    # the population loss on window A: variances 2/3 and 1/6 -> CCC (2/3) / (13/12) = 8/13
    assert ccc_loss(pred[:1], labels[:1]).item() == pytest.approx(1 - 8 / 13, rel=1e-7)


def test_authors_loss_is_a_transcription_of_their_ccc_loss():
    # their experiment_regular.CCCLoss, written out: elementwise covariance, means over time, then one mean
    generator = torch.Generator().manual_seed(0)
    gold, pred = torch.randn(4, 9, 2, generator=generator), torch.randn(4, 9, 2, generator=generator)
    weights = torch.ones_like(gold)
    weights[:, :, 0] *= 10
    gold_mean, pred_mean = gold.mean(1, keepdim=True), pred.mean(1, keepdim=True)
    covariance = (gold - gold_mean) * (pred - pred_mean)
    denominator = gold.var(1, keepdim=True, unbiased=True) + pred.var(1, keepdim=True, unbiased=True) \
        + (gold_mean - pred_mean) ** 2 + 1e-8
    theirs = torch.mean((1 - 2 * covariance / denominator) * weights)
    ours = torch.stack([w * authors_ccc_loss(pred[..., c], gold[..., c]) for c, w in enumerate((10.0, 1.0))]).mean()
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)


def _their_ccc_centering(data: np.ndarray) -> np.ndarray:
    # base/logger.py ConcordanceCorrelationCoefficient of the authors, written out
    k = len(data)
    pairs = [(a, b) for a in range(k - 1) for b in range(a + 1, k)]
    pair_ccc = {}
    for a, b in pairs:
        x, y = data[a], data[b]
        cov = np.nanmean((x - x.mean()) * (y - y.mean()))
        pair_ccc[a, b] = 2 * cov / (np.nansum((x - x.mean()) ** 2) / (len(x) - 1)
                                    + np.nansum((y - y.mean()) ** 2) / (len(y) - 1) + (x.mean() - y.mean()) ** 2 + 1e-100)
    agreement = np.array([np.mean([v for p, v in pair_ccc.items() if r in p]) for r in range(k)])
    means = data.mean(axis=1)
    weight = np.sum(means * agreement / np.sum(agreement))
    return np.mean(data - means[:, None] + weight, axis=0)


def test_authors_fold_fusion_keeps_negative_agreements():
    rng = np.random.default_rng(3)
    base = np.sin(np.linspace(0, 6, 40))
    folds = np.stack([base + 0.2, base * 0.8 - 0.1, -base + 0.3, base + rng.normal(0, 0.3, 40)])  # fold 2 disagrees
    authors = ccc_centering(folds, style="authors")
    np.testing.assert_allclose(authors, _their_ccc_centering(folds), rtol=1e-12)
    assert not np.allclose(authors, ccc_centering(folds, style="clipped"))  # clipping fold 2's weight changes M
    with pytest.raises(ValueError, match="fold fusion style"):
        ccc_centering(folds, style="mine")
