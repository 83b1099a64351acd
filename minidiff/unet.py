"""The noise-prediction network: a small U-Net eps_theta(x_t, t, y) in Flax NNX.

The architecture follows DDPM (Ho et al. 2020, Appendix B) and its descendants in
guided-diffusion (Dhariwal & Nichol 2021), scaled down to run on a laptop CPU:

    x (B, H, W, C) -> conv3x3
      -> down path, per level l:  num_res_blocks x ResBlock (each output kept as a skip),
                                  then a stride-2 conv3x3          28 -> 14 -> 7 on MNIST
      -> middle (lowest resolution): ResBlock, self-attention (optional), ResBlock
      -> up path, per level l:    num_res_blocks x ResBlock(concat[h, skip]), then upsample
      -> GroupNorm, SiLU, conv3x3 -> eps (B, H, W, C)

Sized for a laptop CPU: few channels at full resolution and many at the lowest one, and one
up ResBlock per skip (DDPM has one more per level); docs/speed.md has the measurements behind
these choices. The MNIST preset predicts v rather than eps (Salimans & Ho 2022; see
UNetConfig.prediction), which keeps its deterministic samples inside the data range. The blocks (ResBlock, AttentionBlock, ...) live in minidiff/layers.py.

Every ResBlock receives the sum of a timestep embedding and a class embedding. The class
table has num_classes + 1 rows: row `num_classes` is the learned *null class* used for
classifier-free guidance (Ho & Salimans 2021). `__call__` also accepts a class embedding
vector directly (`class_emb`), which null-class inversion optimises by gradient descent.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from minidiff.layers import AttentionBlock, Conv3x3, GroupNorm, ResBlock, Upsample, take_rows, timestep_embedding
from minidiff.text_layers import CrossAttentionBlock, CrossControl, TextEncoder


PREDICTIONS = ("eps", "v")  # the network's output; the samplers always see eps (pipeline.unet_eps_fn)
CONDITIONINGS = ("label", "text")  # a class label, or a prompt's tokens through cross-attention


@dataclass(frozen=True)
class UNetConfig:
    """The U-Net's shape: one field per choice, checked on construction (ValueError names the field)."""

    image_size: int = 28  # input height = width, in pixels
    in_channels: int = 1  # image channels (1 for MNIST, 3 for CIFAR-10); also output channels
    channels: tuple[int, ...] = (16, 48, 128)  # feature width per resolution level, full res first
    num_res_blocks: int = 1  # ResBlocks per level, on the down path and again on the up path
    attention: bool = True  # one self-attention block in the middle, at the lowest resolution
    attention_heads: int = 4  # heads of that attention block; must divide channels[-1]
    num_classes: int = 10  # real classes 0..num_classes-1; index num_classes is the null class
    emb_dim: int = 128  # width of the time + class embedding fed to every ResBlock
    num_groups: int = 8  # GroupNorm groups; must divide every entry of channels
    prediction: str = "eps"  # what the network outputs: "eps" (DDPM) or "v" (Salimans & Ho 2022)
    conditioning: str = "label"  # "label": a class table; "text": prompt tokens through cross-attention
    # The fields below are read only when conditioning is "text".
    vocab_size: int = 16  # token ids 0..vocab_size-1 (captions.VOCABULARY)
    text_length: int = 4  # tokens per prompt (captions.TEXT_LENGTH)
    context_dim: int = 64  # width of the text encoder's token embeddings (the cross-attention keys)
    cross_attention_levels: tuple[int, ...] = (1, 2)  # levels with a cross-attention block after
    #   every ResBlock, down and up path (0 = full resolution); the middle always has one

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(self.channels))  # hashable, for jit
        object.__setattr__(self, "cross_attention_levels", tuple(self.cross_attention_levels))
        levels = len(self.channels)
        if levels < 1:
            raise ValueError("channels must name at least one resolution level")
        if self.image_size < 1 or self.image_size % 2 ** (levels - 1):
            raise ValueError(
                f"image_size={self.image_size} must be divisible by 2**(len(channels)-1)"
                f"={2 ** (levels - 1)} to be halved at each of the {levels - 1} downsamplings"
            )
        if self.in_channels < 1:
            raise ValueError(f"in_channels={self.in_channels} must be positive")
        if self.num_groups < 1:
            raise ValueError(f"num_groups={self.num_groups} must be >= 1")
        for c in self.channels:
            if c < 1 or c % self.num_groups:
                raise ValueError(
                    f"channels={self.channels}: every entry must be a positive multiple of "
                    f"num_groups={self.num_groups}"
                )
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks={self.num_res_blocks} must be >= 1")
        if self.attention and self.channels[-1] % self.attention_heads:
            raise ValueError(
                f"attention_heads={self.attention_heads} must divide "
                f"channels[-1]={self.channels[-1]}"
            )
        if self.num_classes < 1:
            raise ValueError(f"num_classes={self.num_classes} must be >= 1")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction={self.prediction!r} must be one of {PREDICTIONS}")
        if self.emb_dim < 2 or self.emb_dim % 2:
            raise ValueError(f"emb_dim={self.emb_dim} must be a positive even number")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning={self.conditioning!r} must be one of {CONDITIONINGS}")
        if self.conditioning == "text":
            for name in ("vocab_size", "text_length", "context_dim"):
                if getattr(self, name) < 1:
                    raise ValueError(f"{name}={getattr(self, name)} must be positive")
            if self.context_dim % self.attention_heads:
                raise ValueError(f"attention_heads={self.attention_heads} must divide context_dim={self.context_dim}")
            for l in self.cross_attention_levels:
                if not 0 <= l < levels or self.channels[l] % self.attention_heads:
                    raise ValueError(f"cross_attention_levels={self.cross_attention_levels}: each must be a level "
                                     f"0..{levels - 1} whose width attention_heads={self.attention_heads} divides")

    @classmethod
    def mnist(cls) -> "UNetConfig":
        """28x28x1 images (MNIST, Fashion-MNIST): 28 -> 14 -> 7, about 1.85M parameters,
        predicting v. Both choices were measured (docs/results.md, "Clean samples"): with eps
        prediction, deterministic samples left [-1, 1]; 32 full-resolution channels (16 before)
        cost ~1.5x per training step on a 2-core CPU (docs/speed.md)."""
        return cls(image_size=28, in_channels=1, channels=(32, 64, 128), num_res_blocks=1, prediction="v")

    @classmethod
    def mnist_text(cls) -> "UNetConfig":
        """The MNIST preset conditioned on prompts: cross-attention at 14x14, 7x7 and the middle."""
        return dataclasses.replace(cls.mnist(), conditioning="text")

    @classmethod
    def cifar(cls) -> "UNetConfig":
        """32x32x3 images (CIFAR-10): 32 -> 16 -> 8, about 11.6M parameters (meant for a GPU)."""
        return cls(image_size=32, in_channels=3, channels=(64, 128, 256), num_res_blocks=2,
                   emb_dim=256)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Control:
    """Attention control of one batched forward pass (Prompt-to-Prompt, Hertz et al. 2022;
    Plug-and-Play, Tumanyan et al. 2023), as plain arrays: no hooks, no global state.

    Row b of the batch takes, from row source[b], its self-attention weights as far as
    attention[b] says, and the output of up-path level l (deepest first, before upsampling)
    as far as features[l, b] says (layers.take_rows). Weights are 0 or 1 in practice; a row
    whose source is itself is left alone whatever its weights.
    """

    source: jax.Array  # (B,) int32 batch rows
    attention: jax.Array  # (B,) float32 in [0, 1]
    features: jax.Array  # (levels, B) float32 in [0, 1], the up path's levels deepest first
    cross: CrossControl | None = None  # a text model's cross-attention maps, at every such block


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Maps:
    """What a forward pass can return beside its output, for drawing and for tests."""

    attention: jax.Array | None  # (B, heads, N, N) the middle self-attention weights, N = pixels there
    features: tuple[jax.Array, ...]  # per up-path level, deepest first: (B, h, w, channels[l])
    cross: tuple[jax.Array, ...] = ()  # a text model's cross-attention weights (B, heads, h*w, L),
    #   one per block in the order of the forward pass (down path, middle, up path)


class UNet(nnx.Module):
    """eps_theta(x_t, t, y): predicts the noise in x_t (or, with config.prediction "v", the
    velocity v; pipeline.unet_eps_fn turns it into eps). Output has the shape of x_t."""

    def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
        self.config = config
        cfg, chs, G = config, config.channels, config.num_groups
        # Time and class embeddings -> one (B, emb_dim) conditioning vector.
        self.time_mlp1 = nnx.Linear(cfg.emb_dim, cfg.emb_dim, rngs=rngs)
        self.time_mlp2 = nnx.Linear(cfg.emb_dim, cfg.emb_dim, rngs=rngs)
        text = cfg.conditioning == "text"
        if text:  # prompts: a text encoder, read by cross-attention blocks (made below)
            self.class_table = None
            self.text_encoder = TextEncoder(cfg.vocab_size, cfg.text_length, cfg.context_dim,
                                            cfg.attention_heads, rngs=rngs)
        else:
            # +1 row: the null class. Rows start at unit scale (as torch.nn.Embedding does), level with
            # the time embedding: Flax's default (std 1/sqrt(emb_dim)) left the labels ~10x weaker, and
            # Adam, which moves each entry ~lr per step, took hundreds of steps to make them matter.
            self.class_table = nnx.Embed(cfg.num_classes + 1, cfg.emb_dim, rngs=rngs,
                                         embedding_init=nnx.initializers.normal(1.0))
            self.text_encoder = None

        def cross(l, c):  # a cross-attention block after a ResBlock of width c at level l, or None
            return (CrossAttentionBlock(c, cfg.context_dim, cfg.attention_heads, G, rngs=rngs)
                    if text and l in cfg.cross_attention_levels else None)

        self.conv_in = Conv3x3(cfg.in_channels, chs[0], rngs=rngs)
        levels, nrb, E = len(chs), cfg.num_res_blocks, cfg.emb_dim
        # Down path. Level l works at image_size / 2**l with chs[l] channels; its first ResBlock
        # widens from chs[l - 1]. Every down ResBlock's output is kept as a skip.
        down = []
        for l, c in enumerate(chs):
            c_in = chs[l - 1] if l > 0 else c
            down.append(nnx.List([ResBlock(c_in if i == 0 else c, c, E, G, rngs=rngs)
                                  for i in range(nrb)]))
        self.down = nnx.List(down)
        self.down_cross = nnx.List([nnx.List([cross(l, c) for _ in range(nrb)]) for l, c in enumerate(chs)])
        self.downsample = nnx.List([Conv3x3(c, c, strides=2, rngs=rngs) for c in chs[:-1]])

        self.mid1 = ResBlock(chs[-1], chs[-1], E, G, rngs=rngs)
        self.mid_attn = (AttentionBlock(chs[-1], cfg.attention_heads, G, rngs=rngs)
                         if cfg.attention else None)
        self.mid_cross = (CrossAttentionBlock(chs[-1], cfg.context_dim, cfg.attention_heads, G, rngs=rngs)
                          if text else None)  # the middle always reads the prompt
        self.mid2 = ResBlock(chs[-1], chs[-1], E, G, rngs=rngs)

        # Up path, deepest level first: each ResBlock sees [h, skip] concatenated, 2 * chs[l]
        # channels, and the upsampler narrows chs[l] -> chs[l - 1] for the next level.
        self.up = nnx.List([
            nnx.List([ResBlock(2 * chs[l], chs[l], E, G, rngs=rngs) for _ in range(nrb)])
            for l in reversed(range(levels))])
        self.up_cross = nnx.List([nnx.List([cross(l, chs[l]) for _ in range(nrb)])
                                  for l in reversed(range(levels))])
        self.upsample = nnx.List([Upsample(chs[l], chs[l - 1], rngs=rngs)
                                  for l in reversed(range(1, levels))])

        self.norm_out = GroupNorm(chs[0], G)
        # Zero-initialised, so eps_pred = 0 at init (DDPM / guided-diffusion's zero_module).
        self.conv_out = Conv3x3(chs[0], cfg.in_channels, zero_init=True, rngs=rngs)

    @property
    def null_class(self) -> int:
        """Label of the learned unconditional ("null") class: the last row of the class table."""
        return self.config.num_classes

    def class_embedding(self, y: jax.Array) -> jax.Array:
        """Rows of the class table for integer labels y (B,) -> (B, emb_dim)."""
        return self.class_table(jnp.asarray(y, jnp.int32))  # (B, emb_dim)

    def embed(self, y: jax.Array) -> jax.Array:
        """The conditioning embedding of y: class-table rows (B, emb_dim) for labels y (B,), or the
        text encoder's context (B, L, context_dim) for token ids y (B, L). Null-class and
        null-text inversion optimise such embeddings (`embedded`)."""
        if self.config.conditioning == "text":
            return self.text_encoder(y)
        return self.class_embedding(y)

    def embedded(self, x: jax.Array, t: jax.Array, emb: jax.Array, **options):
        """The forward pass on a conditioning embedding emb (as `embed` returns) instead of y."""
        key = "context" if self.config.conditioning == "text" else "class_emb"
        return self(x, t, **{key: emb}, **options)

    def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None,
                 class_emb: jax.Array | None = None, control: Control | None = None,
                 return_maps: bool = False, context: jax.Array | None = None):
        """Predict eps from x_t.

        x: (B, H, W, C) float32 in [-1, 1]; t: (B,) int timestep indices 0..T-1 (or a scalar);
        y: a label model's (B,) int labels in 0..num_classes (num_classes = null class), None for
            the null class; a text model's (B, L) token ids (captions.tokenize), required.
        class_emb: (B, emb_dim) or (emb_dim,) vector used in place of class_embedding(y), so
            the output can be differentiated with respect to it (null-class inversion).
        context: a text model's (B, L, context_dim) in place of text_encoder(y) (null-text inversion).
        control: rows that take other rows' attention weights and decoder features (Control).
        Returns eps_pred with the shape of x; with return_maps, (eps_pred, Maps) holding the
        attention weights and features as used (after control).
        """
        cfg = self.config
        S, C = cfg.image_size, cfg.in_channels
        if x.ndim != 4 or tuple(x.shape[1:]) != (S, S, C):
            raise ValueError(f"x has shape {tuple(x.shape)}; this UNetConfig expects "
                             f"(B, {S}, {S}, {C}) (image_size={S}, in_channels={C})")
        B = x.shape[0]
        t = jnp.broadcast_to(t, (B,))
        temb = timestep_embedding(t, cfg.emb_dim)  # (B, emb_dim)
        temb = self.time_mlp2(nnx.silu(self.time_mlp1(temb)))  # (B, emb_dim)
        if cfg.conditioning == "text":
            if context is None:
                if y is None:
                    raise ValueError("a text-conditioned U-Net needs the prompt's tokens y (B, L) or its context")
                context = self.text_encoder(jnp.broadcast_to(y, (B, cfg.text_length)))
            context = jnp.broadcast_to(context, (B, cfg.text_length, cfg.context_dim))  # (B, L, D)
            emb = nnx.silu(temb)  # (B, emb_dim): the prompt enters only through cross-attention
        else:
            if class_emb is None:
                if y is None:
                    y = jnp.full((B,), self.null_class, jnp.int32)
                class_emb = self.class_embedding(jnp.broadcast_to(y, (B,)))  # (B, emb_dim)
            class_emb = jnp.broadcast_to(class_emb, (B, cfg.emb_dim))  # (B, emb_dim)
            emb = nnx.silu(temb + class_emb)  # (B, emb_dim); every ResBlock projects this
        source = None if control is None else control.source
        cross_control = None if control is None else control.cross
        cross_maps = []

        def read_prompt(block, h):  # a cross-attention block, if there is one here
            if block is None:
                return h
            h, probs = block(h, context, source, cross_control)
            cross_maps.append(probs)
            return h

        h = self.conv_in(x)  # (B, H, W, C0)
        skips = []
        for l, blocks in enumerate(self.down):
            for block, reader in zip(blocks, self.down_cross[l]):
                h = read_prompt(reader, block(h, emb))  # (B, H / 2**l, W / 2**l, chs[l])
                skips.append(h)
            if l < len(self.downsample):
                h = self.downsample[l](h)  # (B, H / 2**(l+1), W / 2**(l+1), chs[l])

        h = self.mid1(h, emb)  # (B, H / 2**(L-1), W / 2**(L-1), chs[L-1])
        probs = None
        if self.mid_attn is not None:
            h, probs = self.mid_attn(h, None if control is None else (control.source, control.attention))
        h = read_prompt(self.mid_cross, h)
        h = self.mid2(h, emb)

        features = []
        for i, blocks in enumerate(self.up):  # levels l = L-1, ..., 0
            for block, reader in zip(blocks, self.up_cross[i]):
                h = jnp.concatenate([h, skips.pop()], axis=-1)  # (B, h, w, 2 * chs[l])
                h = read_prompt(reader, block(h, emb))  # (B, h, w, chs[l])
            if control is not None:  # Plug-and-Play's feature injection
                h = take_rows(h, control.source, control.features[i])
            features.append(h)
            if i < len(self.upsample):
                h = self.upsample[i](h)  # (B, 2h, 2w, chs[l-1])
        out = self.conv_out(nnx.silu(self.norm_out(h)))  # (B, H, W, in_channels)
        return (out, Maps(probs, tuple(features), tuple(cross_maps))) if return_maps else out


def count_params(model: nnx.Module) -> int:
    """Total number of trainable scalars (nnx.Param leaves) in a module."""
    return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
