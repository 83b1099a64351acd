import os

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import pytest
from flax import nnx

from minidiff import models, xla_flags

NAME = xla_flags.FLAG.split("=")[0][2:]  # the DebugOptions field, without the leading "--"
# XLA's default for that field in the checked jaxlib versions: YNNPACK also runs convolutions.
YNN_CONVOLUTIONS = {NAME: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE,"
                          "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}
TESTED = (0, 10, 2)
in_effect = pytest.mark.skipif(xla_flags.FLAG not in os.environ.get("XLA_FLAGS", ""),
                               reason="minidiff's XLA flag is not in effect in this process")


def test_flag_is_added_only_when_wanted():
    add = xla_flags.with_minidiff_flags
    assert add("", TESTED) == xla_flags.FLAG
    assert add("--xla_force_host_platform_device_count=4", TESTED) == (
        "--xla_force_host_platform_device_count=4 " + xla_flags.FLAG)
    own = f"--{NAME}=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
    assert add(own, TESTED) == own  # the user's own setting wins
    assert add("", TESTED, opt_out=True) == ""  # MINIDIFF_XLA_DEFAULTS=1
    first, last = xla_flags.JAXLIB_VERSIONS
    assert add("", (0, 4, 35)) == "" and add("", last) == "" and add("", ()) == ""  # unchecked jaxlib
    assert add("", first) == xla_flags.FLAG


def test_parse_version():
    assert xla_flags.parse_version("0.10.2") == (0, 10, 2)
    assert xla_flags.parse_version("0.11.0.dev20261101") == (0, 11, 0)
    assert xla_flags.parse_version("0.11.1rc1") == (0, 11, 1)
    assert xla_flags.parse_version("unknown") == ()


def test_importing_minidiff_set_the_flag_for_this_jaxlib():
    first, last = xla_flags.JAXLIB_VERSIONS
    if first <= xla_flags.parse_version(jaxlib.__version__) < last and (
            os.environ.get("MINIDIFF_XLA_DEFAULTS") != "1"):
        assert xla_flags.FLAG in os.environ["XLA_FLAGS"]


def test_too_late_to_set_the_flag_warns_and_changes_nothing(monkeypatch):
    jnp.zeros(1).block_until_ready()  # JAX's backend has started
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    monkeypatch.delenv("MINIDIFF_XLA_DEFAULTS", raising=False)
    monkeypatch.setattr(jaxlib, "__version__", ".".join(map(str, xla_flags.JAXLIB_VERSIONS[0])))
    with pytest.warns(UserWarning, match="import minidiff before"):
        xla_flags.apply()
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1"


def _conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@in_effect
def test_convolutions_are_compiled_without_ynnpack():
    # a U-Net-sized convolution (XLA keeps small ones away from YNNPACK in any case)
    x = jax.ShapeDtypeStruct((256, 14, 14, 48), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 48, 48), jnp.float32)
    assert "ynn_fusion" not in jax.jit(_conv).lower(x, w).compile().as_text()
    # and the option this test compares against does give them to YNNPACK
    assert "ynn_fusion" in jax.jit(_conv, compiler_options=YNN_CONVOLUTIONS).lower(x, w).compile().as_text()


@pytest.mark.slow
@in_effect
def test_released_unet_gives_the_same_eps_and_gradients_with_either_convolution():
    model, _ = models.load_model()
    graphdef, params = nnx.split(model)
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (8, 28, 28, 1))
    t, y = jnp.arange(8) * 120, jnp.arange(8) % 11  # label 10: the null class

    def loss_and_grad(params):
        def loss(params):
            eps = nnx.merge(graphdef, params)(x, t, y)
            return jnp.mean(jnp.square(eps - x)), eps
        return jax.value_and_grad(loss, has_aux=True)(params)

    (loss_a, eps_a), grad_a = jax.jit(loss_and_grad)(params)
    (loss_b, eps_b), grad_b = jax.jit(loss_and_grad, compiler_options=YNN_CONVOLUTIONS)(params)
    np.testing.assert_allclose(eps_a, eps_b, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grad_a), jax.tree.leaves(grad_b)):  # float32 round-off
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-4 * float(jnp.max(jnp.abs(b))) + 1e-9
