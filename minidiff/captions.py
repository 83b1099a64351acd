"""Prompts for digits: a fixed vocabulary, a tokenizer, and captions computed from handwriting.

A caption names a digit and, where its handwriting stands out within its class, its stroke
thickness and its slant, in that order: "bold right-leaning seven", "thin four", "two".

    VOCABULARY     <pad> <start> zero .. nine thin bold left-leaning right-leaning
    tokenize       "bold seven" -> [1, 13, 9, 0] (length TEXT_LENGTH, padded)
    detokenize     the inverse, pads and <start> dropped
    fit_terciles   per class, the two cut points of thickness and of slant over training digits
    caption_words  each digit's word slots (thickness, slant, digit) from its attributes
    drop_words     training's caption dropout, as token ids (jitted inside the train step)

Every token sequence starts with <start>, so the empty prompt "" (the null prompt of
classifier-free guidance) is <start> followed by pads, and cross-attention always has a real
token to look at (CLIP's tokenizer likewise opens with a start token). Pads are attended to, as
Stable Diffusion attends to CLIP's end-of-text padding.

A style word is assigned by the terciles of its attribute within the digit's own class over
the training digits (metrics.handwriting_attributes): the lowest third of thickness is "thin",
the highest "bold"; the middle third gets no word. Slant is metrics' shear mu11 / mu02, the
columns gained per row down the image: a "/" loses columns going down, so its slant is
negative, and the lowest third is "right-leaning", the highest "left-leaning".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from minidiff import metrics

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
THICKNESS_WORDS = ("thin", "bold")  # lowest, highest tercile of thickness
SLANT_WORDS = ("left-leaning", "right-leaning")  # highest, lowest tercile of slant (mu11 / mu02)
PAD, START = "<pad>", "<start>"
VOCABULARY = (PAD, START) + DIGIT_WORDS + THICKNESS_WORDS + SLANT_WORDS
TOKEN = {word: i for i, word in enumerate(VOCABULARY)}  # word -> token id
PAD_ID, START_ID = TOKEN[PAD], TOKEN[START]
SLOTS = 3  # word slots of a caption: thickness, slant, digit (in this order)
TEXT_LENGTH = 1 + SLOTS  # tokens per prompt: <start> and the slots, padded
STYLE_ATTRIBUTES = ("thickness", "slant")  # the attributes behind the style words, slot order


class UnknownWord(ValueError):
    """A prompt used a word outside VOCABULARY (the message lists the vocabulary)."""


def tokenize(prompt: str, length: int = TEXT_LENGTH) -> np.ndarray:
    """A prompt as token ids (length,) int32: <start>, its words in order, then pads.

    Words are separated by white space and matched case-insensitively. Raises UnknownWord for a
    word outside the vocabulary, and ValueError for more words than fit in `length`."""
    words = prompt.lower().split()
    unknown = [w for w in words if w not in TOKEN or w in (PAD, START)]
    if unknown:
        raise UnknownWord(f"unknown word(s) {', '.join(map(repr, unknown))} in prompt {prompt!r}; "
                          f"the vocabulary is: {' '.join(VOCABULARY[2:])}")
    if len(words) > length - 1:
        raise ValueError(f"prompt {prompt!r} has {len(words)} words; at most {length - 1} fit")
    ids = [START_ID] + [TOKEN[w] for w in words]
    return np.array(ids + [PAD_ID] * (length - len(ids)), np.int32)


def tokenize_all(prompts, length: int = TEXT_LENGTH) -> np.ndarray:
    """Several prompts -> (N, length) int32."""
    return np.stack([tokenize(p, length) for p in prompts]) if len(prompts) else np.zeros((0, length), np.int32)


def detokenize(ids) -> str:
    """Token ids (L,) back to the prompt: the words between <start> and the pads."""
    return " ".join(VOCABULARY[i] for i in np.asarray(ids).tolist() if i not in (PAD_ID, START_ID))


def word_positions(tokens) -> list[list[tuple[int, str]]]:
    """Each prompt's (token position, word) pairs, <start> and the pads left out: (N, L) -> N lists."""
    return [[(j, VOCABULARY[i]) for j, i in enumerate(row) if i not in (PAD_ID, START_ID)]
            for row in np.asarray(tokens).tolist()]


def null_tokens(length: int = TEXT_LENGTH) -> np.ndarray:
    """The empty prompt "" as tokens (length,): the null prompt of classifier-free guidance."""
    return tokenize("", length)


def style_attributes(images: np.ndarray) -> np.ndarray:
    """(N, 2) thickness and slant of images in [-1, 1] (metrics.handwriting_attributes)."""
    a = metrics.handwriting_attributes(images)
    return a[:, [metrics.ATTRIBUTES.index(name) for name in STYLE_ATTRIBUTES]]


def fit_terciles(images: np.ndarray, labels: np.ndarray, num_classes: int = 10) -> dict:
    """Per class, the 1/3 and 2/3 quantiles of thickness and of slant over these (training) digits:
    {"thickness": [[q1, q2] per class], "slant": [...]}, plain lists (a model file stores them)."""
    attributes, labels = style_attributes(images), np.asarray(labels)
    cuts = {name: [] for name in STYLE_ATTRIBUTES}
    for c in range(num_classes):
        mine = attributes[labels == c]
        if len(mine) < 3:
            raise ValueError(f"class {c} has {len(mine)} digits; terciles need at least 3")
        for j, name in enumerate(STYLE_ATTRIBUTES):
            cuts[name].append([float(q) for q in np.quantile(mine[:, j], [1 / 3, 2 / 3])])
    return cuts


def tercile_of(values: np.ndarray, labels: np.ndarray, cuts) -> np.ndarray:
    """(N,) int in {0, 1, 2}: which third of its class each value falls in (cuts: (classes, 2))."""
    cuts = np.asarray(cuts)[np.asarray(labels)]  # (N, 2)
    return (np.asarray(values) > cuts[:, 0]).astype(np.int32) + (np.asarray(values) > cuts[:, 1])


def caption_words(images: np.ndarray, labels: np.ndarray, terciles: dict) -> np.ndarray:
    """Each digit's caption as word slots (N, SLOTS) int32 token ids, PAD where a slot is empty:
    [thickness word, slant word, digit word], computed from its own handwriting."""
    attributes, labels = style_attributes(images), np.asarray(labels)
    thick = tercile_of(attributes[:, 0], labels, terciles["thickness"])
    slant = tercile_of(attributes[:, 1], labels, terciles["slant"])
    slots = np.full((len(labels), SLOTS), PAD_ID, np.int32)
    slots[:, 0] = np.select([thick == 0, thick == 2], [TOKEN["thin"], TOKEN["bold"]], PAD_ID)
    slots[:, 1] = np.select([slant == 2, slant == 0], [TOKEN["left-leaning"], TOKEN["right-leaning"]], PAD_ID)
    slots[:, 2] = np.array([TOKEN[w] for w in DIGIT_WORDS])[labels]
    return slots


def captions(images: np.ndarray, labels: np.ndarray, terciles: dict) -> list[str]:
    """Each digit's computed caption as text, e.g. "bold right-leaning seven"."""
    return [detokenize(s) for s in caption_words(images, labels, terciles)]


def pack(slots: jax.Array) -> jax.Array:
    """Word slots (B, SLOTS), PAD where empty, as token ids (B, TEXT_LENGTH): <start>, then the
    words in slot order with no gaps, then pads. Works on NumPy and traced JAX arrays."""
    kept = slots != PAD_ID  # (B, SLOTS)
    order = jnp.argsort(~kept, axis=1, stable=True)  # kept slots first, in their order
    packed = jnp.take_along_axis(slots, order, axis=1)  # (B, SLOTS)
    return jnp.concatenate([jnp.full((slots.shape[0], 1), START_ID, slots.dtype), packed], axis=1)


def drop_words(key: jax.Array, slots: jax.Array, p_word: float, p_uncond: float) -> jax.Array:
    """Caption dropout for training, as tokens (B, TEXT_LENGTH): each style word is dropped on its
    own with probability p_word, and the whole caption with p_uncond (the empty prompt, for
    classifier-free guidance, Ho & Salimans 2021), so that "seven" alone and "" are both learned."""
    key_word, key_all = jax.random.split(key)
    is_style = jnp.arange(SLOTS) < SLOTS - 1  # (SLOTS,) the digit word is the last slot
    drop = (jax.random.uniform(key_word, slots.shape) < p_word) & is_style[None, :]
    drop = drop | (jax.random.uniform(key_all, (slots.shape[0], 1)) < p_uncond)  # (B, SLOTS)
    return pack(jnp.where(drop, PAD_ID, slots))


def align(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which source token each target token's cross-attention map comes from, for Prompt-to-
    Prompt: (token_map (L,) int32, token_weight (L,) float32) for token ids source, target (L,).

    Prompts with the same number of words are a word swap (P2P's replace): every token takes
    the map at its own position. Otherwise (refine: words added or removed) the words are
    aligned by their longest common subsequence, as P2P aligns the shared tokens: a shared word
    takes its source word's map, an added word keeps its own (weight 0); <start> and the pads
    take the source's <start> and pads, in order."""
    source, target = np.asarray(source), np.asarray(target)
    L = len(target)
    src_words = [i for i in range(L) if source[i] not in (PAD_ID, START_ID)]
    dst_words = [j for j in range(L) if target[j] not in (PAD_ID, START_ID)]
    token_map, weight = np.arange(L, dtype=np.int32), np.ones(L, np.float32)
    if len(src_words) == len(dst_words):
        return token_map, weight
    # LCS table over the word sequences, then walk it back to pair the shared words.
    a, b = source[src_words], target[dst_words]
    lcs = np.zeros((len(a) + 1, len(b) + 1), np.int32)
    for i in range(len(a)):
        for j in range(len(b)):
            lcs[i + 1, j + 1] = lcs[i, j] + 1 if a[i] == b[j] else max(lcs[i, j + 1], lcs[i + 1, j])
    i, j = len(a), len(b)
    weight[dst_words] = 0.0
    while i and j:
        if a[i - 1] == b[j - 1]:
            token_map[dst_words[j - 1]], weight[dst_words[j - 1]] = src_words[i - 1], 1.0
            i, j = i - 1, j - 1
        elif lcs[i - 1, j] >= lcs[i, j - 1]:
            i -= 1
        else:
            j -= 1
    src_pads = [i for i in range(L) if source[i] == PAD_ID]
    for k, j in enumerate(j for j in range(L) if target[j] == PAD_ID):
        token_map[j] = src_pads[min(k, len(src_pads) - 1)] if src_pads else 0
    token_map[target == START_ID] = 0
    return token_map, weight


def reweight_scale(target: np.ndarray, factors: dict[str, float]) -> np.ndarray:
    """P2P's equalizer: (L,) float32, factors[word] at that word's tokens in target, 1 elsewhere.
    A word of `factors` missing from the prompt is refused (the edit would not change)."""
    target = np.asarray(target)
    scale = np.ones(len(target), np.float32)
    for word, factor in factors.items():
        if word not in TOKEN or not np.any(target == TOKEN[word]):
            raise ValueError(f"cannot reweight {word!r}: it is not a word of the prompt {detokenize(target)!r}")
        scale[target == TOKEN[word]] = factor
    return scale


def with_digit(tokens: np.ndarray, labels) -> np.ndarray:
    """Prompts tokens (N, L) with their digit word changed to labels' (an int, or (N,) ints), every
    other word kept (the word swap of `edit --to`): "bold seven" with 8 -> "bold eight"."""
    tokens = np.array(tokens)
    digits = np.isin(tokens, [TOKEN[w] for w in DIGIT_WORDS])  # (N, L)
    if not digits.any(axis=1).all():
        raise ValueError("every prompt must name a digit to change it")
    words = np.array([TOKEN[w] for w in DIGIT_WORDS])[np.broadcast_to(labels, tokens.shape[:1])]  # (N,)
    return np.where(digits, words[:, None], tokens).astype(np.int32)
