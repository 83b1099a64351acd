"""The caption model on a tiny random U-Net: cross-attention maps, Prompt-to-Prompt's controllers
(replace, refine, reweight) and null-text inversion, each against what it must equal."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff import captions, editing, inversion, metrics, pipeline, samplers, schedules
from minidiff.text_layers import CrossControl
from minidiff.unet import Control
from tests.helpers import TINY_TEXT_UNET, randomised_unet

S = schedules.linear_schedule(1000)
TS = samplers.make_timesteps(1000, 10)
W = 7.5
PROMPTS = ["bold seven", "thin right-leaning two", "four"]


@pytest.fixture(scope="module")
def tiny():
    model = randomised_unet(TINY_TEXT_UNET)
    x0 = jnp.tanh(2 * jax.random.normal(jax.random.PRNGKey(2), (3, 28, 28, 1)))  # image-like range
    tokens = jnp.asarray(captions.tokenize_all(PROMPTS))
    return model, x0, tokens


def test_the_prompt_is_read_and_the_maps_recorded_are_those_used(tiny):
    model, x0, tokens = tiny
    t = jnp.array([500, 500, 500])
    plain = model(x0, t, tokens)
    out, maps = model(x0, t, tokens, return_maps=True)
    np.testing.assert_array_equal(out, plain)
    assert [m.shape for m in maps.cross] == [(3, 2, 196, 4)] * 3  # 14x14: down, middle, up
    np.testing.assert_allclose(np.sum(maps.cross[0], -1), 1.0, rtol=1e-5)  # softmax over tokens
    assert float(jnp.abs(model(x0, t, jnp.roll(tokens, 1, axis=0)) - plain).max()) > 1e-4  # words matter
    # Row 1 takes row 0's cross-attention maps: row 0's are its plain forward pass's, row 1's equal them.
    L = captions.TEXT_LENGTH
    cross = CrossControl(jnp.array([0.0, 1.0, 0.0]), jnp.tile(jnp.arange(L), (3, 1)), jnp.ones((3, L)),
                         jnp.ones((3, L)), jnp.zeros(3))
    control = Control(jnp.array([0, 0, 2]), jnp.zeros(3), jnp.zeros((2, 3)), cross)
    out, taken = model(x0, t, tokens, control=control, return_maps=True)
    for mine, used in zip(maps.cross, taken.cross):
        np.testing.assert_allclose(used[0], mine[0], atol=1e-6)
        np.testing.assert_allclose(used[1], mine[0], atol=1e-6)
        np.testing.assert_allclose(used[2], mine[2], atol=1e-6)
    np.testing.assert_allclose(out[jnp.array([0, 2])], plain[jnp.array([0, 2])], atol=1e-5)
    assert float(jnp.abs(out[1] - plain[1]).max()) > 1e-5


def _edit(model, x0, source, target, controller, method="negative", reweight=None):
    return pipeline.invert_and_edit(model, S, x0, source, method=method, guidance_scale=W, steps=10,
                                    targets=target, controller=controller, reweight=reweight, inner_steps=3)


def test_replace_with_identical_prompts_and_full_control_is_the_reconstruction(tiny):
    model, x0, tokens = tiny
    full = pipeline.controller_for(model, attention=1.0, cross=1.0)
    out = _edit(model, x0, tokens, tokens, full, method="null")
    np.testing.assert_allclose(out["edits"], out["reconstructions"], atol=1e-5)


def test_word_swap_under_cross_control_differs_from_no_control(tiny):
    model, x0, tokens = tiny
    swapped = jnp.asarray(captions.tokenize_all(["bold eight", "thin right-leaning three", "five"]))
    none = _edit(model, x0, tokens, swapped, pipeline.controller_for(model))["edits"]
    crossed = _edit(model, x0, tokens, swapped, pipeline.controller_for(model, cross=0.8))["edits"]
    assert float(np.abs(crossed - none).max()) > 1e-4


def test_features_above_full_resolution_are_the_prompt_switch_unless_it_reads_the_prompt(tiny):
    """Plug-and-Play's injection at the level above full resolution (levels (-2,)) fixes the
    output when the full-resolution blocks read no prompt: it is the prompt switch after that
    fraction. With cross-attention at 28x28 too (`train --cross-attention-levels 0,1`) the new
    prompt still acts after it, which is why the word swap's sweep has those rows."""
    model, x0, tokens = tiny
    swapped = jnp.asarray(captions.tokenize_all(["bold eight", "thin right-leaning three", "five"]))
    injected = _edit(model, x0, tokens, swapped, pipeline.controller_for(model, features=0.4, levels=(-2,)))
    switched = _edit(model, x0, tokens, swapped, pipeline.controller_for(model, source_label=0.4))
    np.testing.assert_allclose(injected["edits"], switched["edits"], atol=1e-4)
    full_res = randomised_unet(dataclasses.replace(TINY_TEXT_UNET, cross_attention_levels=(0, 1)))
    injected = _edit(full_res, x0, tokens, swapped, pipeline.controller_for(full_res, features=0.4, levels=(-2,)))
    switched = _edit(full_res, x0, tokens, swapped, pipeline.controller_for(full_res, source_label=0.4))
    assert float(np.abs(injected["edits"] - switched["edits"]).max()) > 1e-3


def test_reweight_by_one_changes_nothing_and_by_four_changes_the_edit(tiny):
    model, x0, tokens = tiny
    controller = pipeline.controller_for(model, cross=0.8)
    base = _edit(model, x0[:1], tokens[:1], tokens[:1], controller)["edits"]
    same = _edit(model, x0[:1], tokens[:1], tokens[:1], controller, reweight={"bold": 1.0})["edits"]
    more = _edit(model, x0[:1], tokens[:1], tokens[:1], controller, reweight={"bold": 4.0})["edits"]
    np.testing.assert_array_equal(same, base)
    assert float(np.abs(more - base).max()) > 1e-4


def test_refine_keeps_the_shared_words_maps_and_lets_the_new_word_attend(tiny):
    model, x0, _ = tiny
    source = jnp.asarray(captions.tokenize_all(["seven"]))
    target = jnp.asarray(captions.tokenize_all(["bold seven"]))
    tokens = pipeline.token_control(source, target)
    np.testing.assert_array_equal(tokens.token_map, [[0, 1, 1, 2]])
    np.testing.assert_array_equal(tokens.token_weight, [[1, 0, 1, 1]])
    refined = _edit(model, x0[:1], source, target, pipeline.controller_for(model, cross=1.0))["edits"]
    uncontrolled = _edit(model, x0[:1], source, target, pipeline.controller_for(model))["edits"]
    assert float(np.abs(refined - uncontrolled).max()) > 1e-4


def test_null_text_inversion_reconstructs_where_plain_ddim_inversion_does_not(tiny):
    model, x0, tokens = tiny
    emb_fn = pipeline.unet_embedding_fns(model)[0]
    cond, null = model.embed(tokens), pipeline.null_embedding(model)
    assert cond.shape == (3, 4, 16) and null.shape == (4, 16)
    plain = inversion.invert("ddim", emb_fn, S, x0, TS, cond, null, W)
    inv = inversion.invert("null", emb_fn, S, x0, TS, cond, null, W, inner_steps=10)
    assert inv.null_embeddings.shape == (10, 3, 4, 16)
    rec = lambda i: inversion.reconstruct(emb_fn, S, i, TS, W, cond)
    psnr_null, psnr_plain = metrics.psnr(x0, rec(inv)).mean(), metrics.psnr(x0, rec(plain)).mean()
    assert psnr_null > psnr_plain + 3, (psnr_null, psnr_plain)
    # negative-prompt inversion reconstructs as the w = 1 inversion; direct inversion exactly
    for method in ("negative", "direct"):
        out = inversion.invert(method, emb_fn, S, x0, TS, cond, null, W)
        assert out.null_embeddings.shape == (10, 3, 4, 16)
    np.testing.assert_allclose(rec(inversion.invert("direct", emb_fn, S, x0, TS, cond, null, W)), x0, atol=1e-6)


def test_sampling_takes_prompts_or_digit_labels(tiny):
    model, _, tokens = tiny
    by_label = pipeline.generate(model, S, [7, 2], jax.random.PRNGKey(0), steps=3)
    by_word = pipeline.generate(model, S, captions.tokenize_all(["seven", "two"]), jax.random.PRNGKey(0), steps=3)
    np.testing.assert_array_equal(by_label, by_word)
    with pytest.raises(ValueError, match=r"prompt tokens must be \(N, 4\)"):
        pipeline.generate(model, S, np.zeros((2, 5), np.int32), jax.random.PRNGKey(0), steps=3)
    with pytest.raises(ValueError, match="cross-attention control needs a caption model"):
        from tests.helpers import TINY_UNET
        pipeline.controller_for(randomised_unet(TINY_UNET), cross=0.5)


def test_word_maps_are_each_tokens_share_of_the_attention(tiny):
    model, x0, tokens = tiny
    from minidiff import word_maps

    maps = word_maps.of_images(model, S, x0, tokens, steps=3)
    assert maps.shape == (3, 4, 28, 28)
    np.testing.assert_allclose(maps.sum(axis=1), 1.0, rtol=1e-5)  # a softmax over the tokens, averaged
    samples, sampled = word_maps.of_samples(model, S, tokens[:2], jax.random.PRNGKey(0), steps=3)
    assert samples.shape == (2, 28, 28, 1) and sampled.shape == (2, 4, 28, 28)
    with pytest.raises(ValueError, match="need a caption model"):
        from tests.helpers import TINY_UNET
        word_maps.cross_attention_maps(randomised_unet(TINY_UNET), np.zeros((1, 1, 28, 28, 1)), [5], [1])


def test_renormalised_reweight_is_a_logit_shift():
    """Renormalised, a factor c on a word with share p gives it c p / (1 + (c - 1) p) and scales
    the other tokens' shares by 1 / (1 + (c - 1) p); without it (the default), P2P's c p and the rest unchanged."""
    from minidiff.text_layers import control_cross_attention

    probs = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(0), (2, 1, 5, 4)), axis=-1)  # (B, h, N, L)
    c, j = 3.0, 2
    scale = jnp.ones((2, 4)).at[:, j].set(c)
    control = lambda normalise: CrossControl(jnp.ones(2), jnp.tile(jnp.arange(4), (2, 1)), jnp.zeros((2, 4)),
                                             scale, jnp.array([0.0, 1.0]) * normalise)
    out = control_cross_attention(probs, jnp.arange(2), control(1.0))
    p = probs[1, ..., j]
    np.testing.assert_allclose(out[1, ..., j], c * p / (1 + (c - 1) * p), rtol=1e-5)
    np.testing.assert_allclose(np.sum(out[1], -1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out[0], probs[0] * scale[0], rtol=1e-6)  # row 0 is not renormalised
    np.testing.assert_allclose(control_cross_attention(probs, jnp.arange(2), control(0.0)), probs * scale[:, None, None],
                               rtol=1e-6)
    paper = CrossControl(jnp.ones(2), jnp.tile(jnp.arange(4), (2, 1)), jnp.zeros((2, 4)), scale)  # left out: P2P's
    np.testing.assert_allclose(control_cross_attention(probs, jnp.arange(2), paper), probs * scale[:, None, None],
                               rtol=1e-6)
