"""Tests for minidiff/captions.py: the tokenizer, captions computed from handwriting, caption
dropout and Prompt-to-Prompt's token alignment."""

import itertools

import jax
import numpy as np
import pytest

from minidiff import captions


def test_every_caption_round_trips_through_the_tokenizer():
    for thick, slant, digit in itertools.product(("", "thin", "bold"), ("", "left-leaning", "right-leaning"),
                                                 captions.DIGIT_WORDS):
        prompt = " ".join(w for w in (thick, slant, digit) if w)
        ids = captions.tokenize(prompt)
        assert ids.shape == (captions.TEXT_LENGTH,) and ids[0] == captions.START_ID
        assert captions.detokenize(ids) == prompt
    assert captions.detokenize(captions.null_tokens()) == ""
    np.testing.assert_array_equal(captions.tokenize(""), [captions.START_ID] + [captions.PAD_ID] * 3)
    np.testing.assert_array_equal(captions.tokenize("  Bold SEVEN "), captions.tokenize("bold seven"))


def test_unknown_words_are_refused_with_the_vocabulary():
    with pytest.raises(captions.UnknownWord, match="'seventeen'.*vocabulary is: zero one"):
        captions.tokenize("bold seventeen")
    with pytest.raises(captions.UnknownWord, match="<pad>"):
        captions.tokenize("<pad>")  # the special tokens are not words
    with pytest.raises(ValueError, match="at most 3 fit"):
        captions.tokenize("thin bold left-leaning seven")


def _stroke(slope: float, width: int) -> np.ndarray:
    """A 28x28 image in [-1, 1]: a vertical stroke sheared by `slope` columns per row down, `width` wide."""
    img = -np.ones((28, 28))
    for r in range(4, 24):
        c = int(round(14 + slope * (r - 14)))
        img[r, c - width // 2:c - width // 2 + width] = 1.0
    return img[..., None]


def test_captions_come_from_the_terciles_of_each_class():
    # Class 0: nine strokes, every slope with every width; class 1: the same, so its cut points match.
    slopes, widths = (-0.4, 0.0, 0.4), (1, 3, 5)
    images = np.stack([_stroke(s, w) for s in slopes for w in widths] * 2)
    labels = np.repeat([0, 1], 9)
    cuts = captions.fit_terciles(images, labels, num_classes=2)
    words = captions.captions(images, labels, cuts)
    # A "/" loses columns going down (slope < 0 here), so its slant is negative: it leans right.
    slash, backslash = _stroke(-0.4, 3), _stroke(0.4, 3)
    assert captions.style_attributes(slash[None])[0, 1] < 0 < captions.style_attributes(backslash[None])[0, 1]
    by_hand = []
    for s in slopes:
        for w in widths:
            thick = {1: "thin", 3: "", 5: "bold"}[w]
            lean = {-0.4: "right-leaning", 0.0: "", 0.4: "left-leaning"}[s]
            by_hand.append(" ".join(x for x in (thick, lean, "zero") if x))
    assert words[:9] == by_hand
    assert words[9:] == [p.replace("zero", "one") for p in by_hand]
    with pytest.raises(ValueError, match="class 1 has 0 digits"):
        captions.fit_terciles(images[:9], labels[:9], num_classes=2)


def test_caption_dropout_drops_style_words_alone_and_whole_captions():
    slots = np.array([[captions.TOKEN["bold"], captions.TOKEN["left-leaning"], captions.TOKEN["seven"]],
                      [captions.PAD_ID, captions.TOKEN["right-leaning"], captions.TOKEN["two"]]] * 500, np.int32)
    key = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(captions.drop_words(key, slots, 0.0, 0.0), captions.pack(slots))
    assert [captions.detokenize(t) for t in captions.pack(slots[:2])] == ["bold left-leaning seven", "right-leaning two"]
    np.testing.assert_array_equal(captions.drop_words(key, slots, 0.0, 1.0),
                                  np.broadcast_to(captions.null_tokens(), (1000, captions.TEXT_LENGTH)))
    digits_only = [captions.detokenize(t) for t in captions.drop_words(key, slots, 1.0, 0.0)[:2]]
    assert digits_only == ["seven", "two"]
    prompts = [captions.detokenize(t) for t in np.asarray(captions.drop_words(key, slots, 0.3, 0.1))]
    share = lambda p: np.mean([x == p for x in prompts])
    assert 0.05 < share("") < 0.15  # p_uncond
    assert 0.03 < share("seven") < 0.12  # 0.9 * 0.3 * 0.3 / 2 of all rows
    assert 0.2 < share("bold left-leaning seven") < 0.3  # 0.9 * 0.7 * 0.7 / 2
    assert not any("  " in p for p in prompts)


def test_alignment_is_a_word_swap_or_the_shared_words():
    tok = captions.tokenize
    token_map, weight = captions.align(tok("bold seven"), tok("bold eight"))
    np.testing.assert_array_equal(token_map, [0, 1, 2, 3])
    np.testing.assert_array_equal(weight, 1)
    token_map, weight = captions.align(tok("seven"), tok("bold seven"))  # refine: "bold" is new
    np.testing.assert_array_equal(token_map, [0, 1, 1, 2])
    np.testing.assert_array_equal(weight, [1, 0, 1, 1])
    token_map, weight = captions.align(tok("thin seven"), tok("thin right-leaning seven"))
    np.testing.assert_array_equal(token_map[[0, 1, 3]], [0, 1, 2])
    np.testing.assert_array_equal(weight, [1, 1, 0, 1])
    np.testing.assert_array_equal(captions.reweight_scale(tok("bold seven"), {"bold": 2.0}), [1, 2, 1, 1])
    with pytest.raises(ValueError, match="reweight 'thin': it is not a word of the prompt 'bold seven'"):
        captions.reweight_scale(tok("bold seven"), {"thin": 2.0})


def test_the_digit_word_swap_keeps_the_other_words():
    tokens = captions.tokenize_all(["bold right-leaning seven", "two"])
    assert [captions.detokenize(t) for t in captions.with_digit(tokens, 8)] == ["bold right-leaning eight", "eight"]
    assert [captions.detokenize(t) for t in captions.with_digit(tokens, [0, 3])] == ["bold right-leaning zero", "three"]
    with pytest.raises(ValueError, match="must name a digit"):
        captions.with_digit(captions.tokenize_all(["bold"]), 1)
