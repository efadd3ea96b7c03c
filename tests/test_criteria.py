"""What "fooled" means, on hand-written cases: the label maps (in9 and identity, the "none" group), the margin,
both criteria on tensors and on stored outcome matrices, and the ASR's target pairs. Every expected value is
written by hand from the README's definitions."""
import numpy as np
import pytest
import torch

from advbg.errors import AdvbgError
from advbg.models.label_map import make_label_map
from advbg.search.criteria import (
    CRITERIA,
    OUTCOME_MISSING,
    OUTCOME_NONE,
    Criterion,
    asr,
    decode_outcome,
    fooled_targets,
    target_mask,
)

nan = float("nan")

# ImageNet-1k indices used below: 10 and 11 are bird (1), 200 and 201 dog (0), 40 reptile (3), 390 fish (8),
# 500 and 281 (a domestic cat) are unmapped ("none"), 387 carnivore (4).
BIRD, BIRD2, DOG, DOG2, REPTILE, FISH, UNMAPPED, CAT, CARNIVORE = 10, 11, 200, 201, 40, 390, 500, 281, 387


def row(*pairs) -> torch.Tensor:
    """(1, 1000) logits, 0 everywhere except the given (ImageNet index, value) pairs."""
    x = torch.zeros(1, 1000)
    for i, v in pairs:
        x[0, i] = v
    return x


# ----------------------------------------------------------------------------------------------- label maps
def test_in9_prediction_is_the_class_of_the_top1_logit():
    lm = make_label_map("in9", 1000)
    logits = torch.cat([
        row((BIRD, 5.0), (DOG, 3.0), (DOG2, 2.9), (UNMAPPED, 4.0)),   # top-1 bird
        row((BIRD, 5.0), (DOG, 3.0), (DOG2, 2.9), (UNMAPPED, 9.0)),   # top-1 unmapped -> none
        row((FISH, 1.0)),                                             # top-1 fish (index 390)
        row((CAT, 2.0), (CARNIVORE, 1.5)),                            # a domestic cat is not a carnivore: none
        row((CARNIVORE, 2.0), (CAT, 1.5)),                            # ... but 387 is
        row((REPTILE, 2.0)) - 3.0,                                    # all negative: the top-1 is reptile's -1
    ])
    assert lm.predict(logits).tolist() == [1, -1, 8, -1, 4, 3]


def test_in9_score_is_the_max_logit_of_the_group_not_the_sum():
    lm = make_label_map("in9", 1000)
    # dog has two logits 3.0 and 2.9 (sum 5.9, more than bird's 5.0): the class is still bird, by the max
    logits = row((BIRD, 5.0), (DOG, 3.0), (DOG2, 2.9), (UNMAPPED, 4.0))
    assert lm.predict(logits).tolist() == [1]
    # true dog: 3.0 - 5.0; true bird: 5.0 - 4.0 (the "none" group, 4.0, is the best other); true fish: 0 - 5
    margins = [float(lm.margin(logits, torch.tensor([t]))[0]) for t in (0, 1, 8)]
    assert margins == pytest.approx([-2.0, 1.0, -5.0])


def test_in9_margin_counts_the_none_group_as_an_other_class():
    lm = make_label_map("in9", 1000)
    logits = torch.cat([row((BIRD, 5.0), (UNMAPPED, 9.0)),            # none on top: negative margin for bird
                        row((BIRD, 5.0), (BIRD2, 6.0), (DOG, 2.0))])  # bird's score is 6 (its max), others 2
    true = torch.tensor([1, 1])
    assert lm.margin(logits, true).tolist() == pytest.approx([5.0 - 9.0, 6.0 - 2.0])
    assert lm.predict(logits).tolist() == [-1, 1]


def test_in9_margin_leaves_out_only_the_true_class():
    lm = make_label_map("in9", 1000)
    logits = row((BIRD, 7.0), (DOG, 6.0), (REPTILE, 6.5), (UNMAPPED, 1.0))
    # true reptile: its own 6.5 is not an "other"; the best other is bird's 7.0
    assert lm.margin(logits, torch.tensor([3])).tolist() == pytest.approx([-0.5])
    assert lm.margin(logits, torch.tensor([1])).tolist() == pytest.approx([0.5])      # 7.0 - 6.5


def test_in9_exact_tie_at_the_top_goes_to_the_lower_imagenet_index():
    lm = make_label_map("in9", 1000)
    logits = torch.cat([row((5, 3.0), (BIRD, 3.0)),        # fish's index 5 before bird's 10: fish (8)
                        row((171, 3.0), (DOG, 3.0))])      # unmapped 171 before dog's 200: none (-1)
    assert lm.predict(logits).tolist() == [8, -1]


def test_identity_map_uses_the_models_own_classes():
    lm = make_label_map("identity", 3, ["a", "b", "c"])
    assert lm.class_names == ("a", "b", "c") and not lm.has_none
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 4.0], [-2.0, -3.0, -2.5]])
    assert lm.predict(logits).tolist() == [1, 2, 0]
    assert lm.margin(logits, torch.tensor([0, 2, 0])).tolist() == pytest.approx([1.0 - 3.0, 4.0 - 0.5, -2.0 + 2.5])
    assert lm.margin(logits, torch.tensor([1, 1, 2])).tolist() == pytest.approx([3.0 - 2.0, -1.0 - 4.0, -2.5 + 2.0])


# ----------------------------------------------------------------------------------------------- criteria
# (pred, true, bg label) -> (fooled under any, fooled under bg-class), from the definitions
CASES = [
    ((1, 1, 1), (False, False)),     # right answer on a background of its own class
    ((0, 0, 0), (False, False)),     # ... class 0 too
    ((1, 1, -1), (False, False)),    # right answer on an unlabelled background
    ((1, 1, 2), (False, False)),     # right answer on another class's background
    ((2, 1, 2), (True, True)),       # predicted as the background's class
    ((0, 1, 0), (True, True)),       # ... class 0 (a background label 0 is a class, not "none")
    ((2, 1, 3), (True, False)),      # wrong, but not the background's class
    ((2, 1, -1), (True, False)),     # wrong, on an unlabelled background
    ((-1, 1, -1), (True, False)),    # "none" on an unlabelled background: pred == bg label, yet no class
    ((-1, 1, 2), (True, False)),     # "none" on a labelled background
    ((-1, 0, 0), (True, False)),     # "none" on a background of its own class
]


@pytest.mark.parametrize("lib", ["torch", "numpy"])
@pytest.mark.parametrize("name", ["any", "bg-class"])
def test_fooled_on_hand_written_cases(lib, name):
    pred, true, bg = (list(c) for c in zip(*[case for case, _ in CASES]))
    want = [w[0] if name == "any" else w[1] for _, w in CASES]
    arr = torch.tensor if lib == "torch" else np.array
    got = Criterion(name).fooled(arr(pred), arr(true), arr(bg))
    assert isinstance(got, torch.Tensor if lib == "torch" else np.ndarray)
    assert got.tolist() == want


def test_fooled_broadcasts_foregrounds_against_backgrounds():
    pred = torch.tensor([[1, 2, -1], [1, 0, 2]])          # (F=2, B=3)
    true = torch.tensor([[1], [0]])                        # (F, 1)
    bg = torch.tensor([[1, 2, -1]])                        # (1, B)
    assert Criterion("any").fooled(pred, true, bg).tolist() == [[False, True, True], [True, False, True]]
    assert Criterion("bg-class").fooled(pred, true, bg).tolist() == [[False, True, False], [True, False, False]]


def test_label_map_and_criterion_together_on_an_unmapped_top1():
    lm = make_label_map("in9", 1000)
    pred = lm.predict(row((BIRD, 5.0), (CAT, 8.0)))       # a domestic cat on top: "none"
    true = torch.tensor([1])
    assert pred.tolist() == [-1] and float(lm.margin(row((BIRD, 5.0), (CAT, 8.0)), true)[0]) == pytest.approx(-3.0)
    assert Criterion("any").fooled(pred, true, torch.tensor([-1])).tolist() == [True]
    for bg in (-1, 0, 1, 4):
        assert Criterion("bg-class").fooled(pred, true, torch.tensor([bg])).tolist() == [False], bg


def test_criteria_names_and_their_meaning():
    assert CRITERIA == ("any", "bg-class")
    assert str(Criterion("bg-class")) == "bg-class" and "background's class" in repr(Criterion("bg-class"))
    with pytest.raises(AdvbgError, match="unknown criterion 'bg'; use one of: any, bg-class"):
        Criterion("bg")


# ----------------------------------------------------------------------------------------------- stored outcomes
def test_outcome_codes_decode_to_predictions():
    assert OUTCOME_NONE == 254 and OUTCOME_MISSING == 255
    out = np.array([[0, 254, 8], [3, 255, 1]], np.uint8)
    np.testing.assert_array_equal(decode_outcome(out), [[0, -1, 8], [3, 255, 1]])
    assert decode_outcome(out).dtype == np.int64


def test_fooled_outcome_on_a_hand_written_matrix():
    outcome = np.array([[0, 254, 2],        # fg 0 (true 0): right on its own class's bg, none, bg 2's class
                        [254, 1, 0]],       # fg 1 (true 1): none on a class-0 bg, right, class 0 on a class-2 bg
                       np.uint8)
    true, bg = np.array([0, 1]), np.array([0, -1, 2])
    np.testing.assert_array_equal(Criterion("any").fooled_outcome(outcome, true, bg),
                                  [[False, True, True], [True, False, True]])
    np.testing.assert_array_equal(Criterion("bg-class").fooled_outcome(outcome, true, bg),
                                  [[False, False, True], [False, False, False]])


def test_fooled_outcome_of_none_on_an_unlabelled_background_is_not_a_bg_class_fooling():
    outcome = np.array([[OUTCOME_NONE, OUTCOME_NONE]], np.uint8)
    true, bg = np.array([3]), np.array([-1, 3])
    assert Criterion("bg-class").fooled_outcome(outcome, true, bg).tolist() == [[False, False]]
    assert Criterion("any").fooled_outcome(outcome, true, bg).tolist() == [[True, True]]


@pytest.mark.parametrize("name", ["any", "bg-class"])
def test_fooled_outcome_refuses_pairs_never_evaluated(name):
    outcome = np.array([[0, OUTCOME_MISSING], [OUTCOME_MISSING, 1]], np.uint8)
    with pytest.raises(AdvbgError, match="2 pairs of the outcome matrix were never evaluated"):
        Criterion(name).fooled_outcome(outcome, np.array([0, 1]), np.array([0, 1]))


# ----------------------------------------------------------------------------------------------- ASR
FG = np.array([0, 1, 1, 2, -1])              # the last foreground has no class: never a target
BG = np.array([1, -1, 0, 2])
OUT = np.array([[1, 0, 0, 254],              # true 0
                [1, 3, 0, 2],                # true 1
                [0, 255, 1, 2],              # true 1 (pair (2, 1) never evaluated: not a target, so allowed)
                [1, 2, 254, 2],              # true 2
                [1, 1, 1, 1]], np.uint8)     # no class


def test_target_mask_pairs_other_class_foregrounds_with_labelled_backgrounds():
    np.testing.assert_array_equal(target_mask(FG, BG), [[True, False, False, True],
                                                        [False, False, True, True],
                                                        [False, False, True, True],
                                                        [True, False, True, False],
                                                        [False, False, False, False]])


def test_asr_by_hand():
    # bg 0 (class 1): targets fg 0, 3 -> both predicted 1                          -> 100 %
    # bg 1 (no class): no targets                                                  -> NaN
    # bg 2 (class 0): targets fg 1, 2, 3 -> predicted 0, 1, none: one as class 0   -> 33.3 %
    # bg 3 (class 2): targets fg 0, 1, 2 -> predicted none, 2, 2                   -> 66.7 %
    np.testing.assert_allclose(asr(OUT, FG, BG, "bg-class"), [100.0, nan, 100 / 3, 200 / 3])
    # under `any` a target is fooled when it is not its own class: bg 2: 0 != 1, 1 == 1, none != 2
    np.testing.assert_allclose(asr(OUT, FG, BG, "any"), [100.0, nan, 200 / 3, 100.0])
    np.testing.assert_array_equal(fooled_targets(OUT, FG, BG, "bg-class"), [[True, False, False, False],
                                                                           [False, False, True, True],
                                                                           [False, False, False, True],
                                                                           [True, False, False, False],
                                                                           [False, False, False, False]])
    # under `any` by hand: a target pair is fooled when its prediction (none included) is not the foreground's class;
    # every non-target pair is False although "none" != its class (non-targets must be masked out, not just renamed)
    np.testing.assert_array_equal(fooled_targets(OUT, FG, BG, "any"), [[True, False, False, True],
                                                                      [False, False, True, True],
                                                                      [False, False, False, True],
                                                                      [True, False, True, False],
                                                                      [False, False, False, False]])


def test_asr_of_a_background_without_targets_is_nan():
    # one class only: every foreground shares the background's class
    np.testing.assert_array_equal(asr(np.array([[1, 2]], np.uint8), np.array([1]), np.array([1, 1])), [nan, nan])


def test_asr_refuses_a_missing_target_pair():
    out = OUT.copy()
    out[0, 0] = OUTCOME_MISSING
    with pytest.raises(AdvbgError, match="1 target pairs of the outcome matrix were never evaluated"):
        asr(out, FG, BG)
