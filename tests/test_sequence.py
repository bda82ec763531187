"""Emotion LSTM: learning, factor masking, evaluation numbers and persistence."""

import numpy as np
import pytest
import torch

from pipeline.errors import InputError
from pipeline.models.classifier import load_classifier, save_classifier, train_classifier
from pipeline.models.configs import ClassifierConfig
from pipeline.models.sequence import EmotionLSTM, evaluate_classifier, mask_factors

N_LATENTS, N_STEPS = 6, 63
INFORMATIVE = [0, 1]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sequences(n_trials, seed):
    """Class = 2 * arousal + valence; factor 0 carries valence and factor 1 arousal, the rest is noise."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 4, n_trials)
    sequences = rng.normal(size=(n_trials, N_STEPS, N_LATENTS))
    sequences[:, :, 0] += np.where(classes % 2 == 1, 1.0, -1.0)[:, None]
    sequences[:, :, 1] += np.where(classes >= 2, 1.0, -1.0)[:, None]
    return sequences.astype(np.float32), classes


CONFIG = ClassifierConfig(hidden=16, epochs=25, batch_size=16, lr=1e-2, patience=5, seed=3, device="cpu")


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train_x, train_y = _sequences(96, seed=0)
    val_x, val_y = _sequences(32, seed=1)
    yield train_classifier(train_x, train_y, val_x, val_y, CONFIG)
    torch.set_num_threads(threads)


def test_lstm_learns_a_separable_task_far_above_chance(trained):
    test_x, test_y = _sequences(64, seed=2)
    scores = evaluate_classifier(trained.model, test_x, test_y)
    assert scores["chance_accuracy"] < 0.4
    assert scores["accuracy"] >= 0.9
    history = trained.history
    assert trained.best_epoch == 1 + int(np.argmin([record["val_loss"] for record in history]))
    assert history[trained.best_epoch - 1]["val_loss"] < 0.5 * history[0]["val_loss"]


def test_masking_the_informative_factors_drops_accuracy_to_chance(trained):
    test_x, test_y = _sequences(64, seed=2)
    keep_informative = np.isin(np.arange(N_LATENTS), INFORMATIVE)
    kept = evaluate_classifier(trained.model, test_x, test_y, keep_mask=keep_informative)
    dropped = evaluate_classifier(trained.model, test_x, test_y, keep_mask=~keep_informative)
    assert kept["accuracy"] >= 0.85
    assert dropped["accuracy"] <= 0.45


def test_mask_factors_zeroes_exactly_the_other_factors():
    sequences, _ = _sequences(3, seed=4)
    keep = np.array([False, True, False, False, True, False])
    masked = mask_factors(sequences, keep)
    np.testing.assert_array_equal(masked[..., keep], sequences[..., keep])
    assert not masked[..., ~keep].any()
    assert sequences[..., ~keep].any()  # the input is left untouched
    with pytest.raises(InputError, match="keep_mask"):
        mask_factors(sequences, keep[:4])
    with pytest.raises(InputError, match="keep_mask"):
        mask_factors(sequences, keep.astype(int))


def test_confusion_and_chance_accuracy_describe_the_evaluated_split():
    torch.manual_seed(0)
    model = EmotionLSTM(N_LATENTS, hidden=8)
    sequences, _ = _sequences(9, seed=5)
    classes = np.array([2, 2, 2, 2, 2, 0, 1, 3, 3])
    scores = evaluate_classifier(model, sequences, classes)
    confusion = np.array(scores["confusion"])
    assert confusion.shape == (4, 4)
    assert confusion.sum() == scores["n"] == 9
    np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(classes, minlength=4))
    assert scores["chance_accuracy"] == pytest.approx(5 / 9)
    assert scores["accuracy"] == pytest.approx(np.trace(confusion) / 9)
    with torch.no_grad():
        predicted = model(torch.from_numpy(sequences)).argmax(dim=1).numpy()
    assert scores["accuracy"] == pytest.approx(np.mean(predicted == classes))


def test_training_is_deterministic_and_a_saved_model_predicts_the_same(tmp_path, trained):
    train_x, train_y = _sequences(96, seed=0)
    val_x, val_y = _sequences(32, seed=1)
    config = ClassifierConfig(**{**CONFIG.model_dump(mode="json"), "epochs": 2})
    first = train_classifier(train_x, train_y, val_x, val_y, config)
    second = train_classifier(train_x, train_y, val_x, val_y, config)
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    assert first.history == second.history == trained.history[:2]

    save_classifier(trained.model, tmp_path)
    restored = load_classifier(tmp_path)
    test_x, test_y = _sequences(16, seed=6)
    assert evaluate_classifier(restored, test_x, test_y) == evaluate_classifier(trained.model, test_x, test_y)


def test_bad_sequences_and_classes_are_refused():
    sequences, classes = _sequences(8, seed=7)
    out_of_range = classes.copy()
    out_of_range[0] = 4
    with pytest.raises(InputError, match=r"classes: values span \[\d, 4\]; expected \[0, 4\)"):
        train_classifier(sequences, out_of_range, config=CONFIG)
    with pytest.raises(
        InputError, match=r"sequences: shape \(8, 63, 6\); expected \(n_trials > 0, steps > 0, 5\)"
    ):
        evaluate_classifier(EmotionLSTM(5, hidden=4), sequences, classes)
    broken = sequences.copy()
    broken[1, 2, 3] = np.inf
    with pytest.raises(InputError, match="NaN or infinite"):
        train_classifier(broken, classes, config=CONFIG)
    with pytest.raises(InputError, match="hidden"):
        ClassifierConfig(hidden=0)
