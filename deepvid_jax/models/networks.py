"""Flax linen models: the teacher classifier and the convolutional VAE.

Models are plain `nn.Module`s configured by frozen dataclasses; their parameters live in explicit
pytrees and every use goes through a pure function (`teacher_logits`, `vae.encode`, ...).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepvid_jax import validate

# What every explainer calls the classifier under study: pure ``(params, images [N, H, W, C])
# -> logits [N, K]``.
TeacherApply = Callable[[object, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class _ClassifierConfig:
    """The fields the teacher and the attentive surrogate share (each documents them)."""

    num_classes: int = 10
    features: tuple[int, ...] = (32, 64)
    hidden: int = 128
    image_shape: tuple[int, int, int] = (28, 28, 1)

    def __post_init__(self):
        validate.fields(self, positive_int=("hidden",), positive_ints=("features",),
                        image_shape=("image_shape",))
        if validate.integer(self.num_classes, f"{type(self).__name__}.num_classes") < 2:
            raise ValueError(f"{type(self).__name__}.num_classes must be >= 2, got "
                             f"{self.num_classes}.")


@dataclasses.dataclass(frozen=True)
class TeacherConfig(_ClassifierConfig):
    """A small CNN classifier: conv blocks (3x3 conv, ReLU, 2x2 max-pool), then an MLP head.

    Attributes:
      num_classes: K, the number of logits.
      features: channels of each conv block; each block halves H and W.
      hidden: width of the dense layer before the logits.
      image_shape: (H, W, C) of inputs; taken from the data by the training code.
    """


class Teacher(nn.Module):
    """images [B, H, W, C] float32 in [0, 1] -> logits [B, K].

    The post-ReLU features of each layer ("conv0_features", ..., "dense_features") are sown into
    the "intermediates" collection (``apply(..., mutable=["intermediates"])`` returns them) and
    are "perturbations" points (pass zeros there to take gradients with respect to them).
    """

    config: TeacherConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, f in enumerate(self.config.features):
            x = nn.Conv(f, (3, 3), name=f"conv{i}")(x)
            x = nn.relu(x)
            # A no-op unless a "perturbations" collection is passed: it lets Grad-CAM and
            # neuron analyses take gradients with respect to these feature maps.
            x = self.perturb(f"conv{i}_features", x)
            self.sow("intermediates", f"conv{i}_features", x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.config.hidden, name="dense")(x))
        x = self.perturb("dense_features", x)
        self.sow("intermediates", "dense_features", x)
        return nn.Dense(self.config.num_classes, name="logits")(x)


def init_teacher(key: jax.Array, config: TeacherConfig) -> dict:
    """Fresh teacher parameters for inputs of shape ``config.image_shape``."""
    validate.config(config, TeacherConfig, "config")
    return _init_params(Teacher, config, key, ((1, *config.image_shape),))


# One compiled program per architecture: initialised outside `jit`, every layer's initialiser
# and forward operation was compiled on its own, once per parameter shape.
@functools.partial(jax.jit, static_argnums=(0, 1, 3))
def _init_params(module: type[nn.Module], config, key: jax.Array,
                 input_shapes: tuple) -> dict:
    """``module(config).init`` on zero inputs of ``input_shapes`` (a shape, or a tuple of
    shapes for an argument that is a tuple of arrays): its parameters."""
    def zeros(shape):
        return tuple(map(zeros, shape)) if isinstance(shape[0], tuple) else jnp.zeros(shape)

    return module(config).init(key, *map(zeros, input_shapes))["params"]


def teacher_logits(params: dict, images: jax.Array, config: TeacherConfig = TeacherConfig()):
    """Pure teacher forward pass.

    Args:
      params: teacher parameter pytree.
      images: [B, H, W, C] float32 in [0, 1].
      config: the architecture the parameters were made for.

    Returns:
      logits [B, K] float32.
    """
    _check_input_shape(images, config.image_shape, "teacher")
    return Teacher(config).apply({"params": params}, images)


@functools.cache
def teacher_apply_for(config: TeacherConfig) -> TeacherApply:
    """Our teacher of ``config`` as a pure ``(params, images) -> logits``: `teacher_logits`
    bound to the config, one function object per config, so that jitted programs taking it as
    a static argument compile once per architecture."""
    validate.config(config, TeacherConfig, "config")
    return functools.partial(teacher_logits, config=config)


def _check_input_shape(images, image_shape, what: str) -> None:
    """Static check (valid under jit): images [B, *image_shape]."""
    shape = tuple(getattr(images, "shape", ()))
    if len(shape) != 4 or shape[1:] != tuple(image_shape):
        raise ValueError(f"the {what} expects images [B, {', '.join(map(str, image_shape))}]; "
                         f"got shape {list(shape)}.")


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """A convolutional VAE with a diagonal Gaussian posterior.

    Attributes:
      latent_dim: size of z.
      features: channels of the encoder's stride-2 convs (mirrored by the decoder). H and W
        must be divisible by 2 ** len(features).
      hidden: width of the dense layer between convs and the latent code.
      image_shape: (H, W, C) of the images; taken from the data by the training code.
      likelihood: of a pixel given z, around the decoded mean sigmoid(logits): "bernoulli"
        (the usual relaxation for near-binary images such as MNIST) or "gaussian" with standard
        deviation ``sigma`` (colour images: the Bernoulli loss of a mid-grey pixel barely
        depends on the prediction, so every image decodes to the mean and the code collapses).
      sigma: the Gaussian's standard deviation, in [0, 1] pixel units.
      spatial_latent: 0 for a dense code (one dense layer of ``hidden`` between the convs and
        z); else z is a grid of this many channels at the convs' last resolution, flattened
        (``latent_dim`` must be ``H / 2**S * W / 2**S * spatial_latent``, S the stages). Each
        latent then describes a neighbourhood of the image: a code that keeps small shapes on
        cluttered colour images, where a dense 32-d code decodes blobs (`vae_config_for`).
      decoder_blocks: residual blocks (two 3x3 convs and a skip) the decoder applies at each
        resolution before it upsamples: more capacity for outlines (0: none, the MNIST
        models).
    """

    latent_dim: int = 16
    features: tuple[int, ...] = (32, 64)
    hidden: int = 256
    image_shape: tuple[int, int, int] = (28, 28, 1)
    likelihood: str = "bernoulli"
    sigma: float = 0.1
    spatial_latent: int = 0
    decoder_blocks: int = 0

    def __post_init__(self):
        validate.fields(self, positive_int=("latent_dim", "hidden"), positive_ints=("features",),
                        image_shape=("image_shape",), positive=("sigma",),
                        nonneg_int=("spatial_latent", "decoder_blocks"))
        validate.choice(self.likelihood, LIKELIHOODS, "VAEConfig.likelihood")
        h, w, _ = self.image_shape
        stride = 2 ** len(self.features)
        if h % stride or w % stride:
            raise ValueError(
                f"VAEConfig: image_shape {self.image_shape} needs H and W divisible by {stride} "
                f"(2 ** len(features={self.features}))."
            )
        if self.spatial_latent and self.latent_dim != self.grid_size * self.spatial_latent:
            raise ValueError(
                f"VAEConfig: a spatial latent of {self.spatial_latent} channels on the "
                f"{h // stride}x{w // stride} grid has latent_dim "
                f"{self.grid_size * self.spatial_latent}, not {self.latent_dim}.")

    @property
    def grid_size(self) -> int:
        """Cells of the convs' last resolution (H / 2**S) * (W / 2**S)."""
        h, w, _ = self.image_shape
        return (h // 2 ** len(self.features)) * (w // 2 ** len(self.features))


LIKELIHOODS = ("bernoulli", "gaussian")


# Channels of successive stride-2 stages (teacher blocks, VAE stages): doubling, capped.
_STAGE_FEATURES = (32, 64, 128, 128, 128)


def _stages_for(height: int, width: int) -> int:
    """How many stages halve an image to about 4-7 pixels a side: 2 up to 31 pixels (MNIST's
    28 -> 7), 3 from 32 (-> 4), 4 from 64."""
    side = min(height, width)
    return max(2, min(len(_STAGE_FEATURES), int(math.log2(max(side, 1) / 4))))


def teacher_config_for(image_shape, num_classes: int) -> TeacherConfig:
    """Our teacher for images of this size: one conv block per stage of `_stages_for` (28x28 ->
    the default two, 32x32 -> three, 64x64 -> four). Any size works (pooling floors)."""
    h, w, _ = validate.image_shape(image_shape, "image_shape")
    return TeacherConfig(num_classes=num_classes, image_shape=(h, w, image_shape[2]),
                         features=_STAGE_FEATURES[: _stages_for(h, w)])


def _twos(n: int) -> int:
    """The exponent of the largest power of 2 dividing n."""
    return (n & -n).bit_length() - 1


def vae_config_for(image_shape, latent_dim: int | None = None,
                   decoder_blocks: int | None = None) -> VAEConfig:
    """Our VAE for images of this size.

    Grayscale: as many stride-2 stages as `_stages_for` and as divide H and W (sizes are never
    padded: 28x28 -> 2, 20x20 -> 2, 30x30 -> 1), a dense latent of ``latent_dim`` (default 16),
    the Bernoulli likelihood: the MNIST models behind every table under docs/results/.

    Colour: one stage fewer (32x32 -> an 8x8 grid; at least one), channels from 64, a spatial
    latent (`VAEConfig.spatial_latent`) of ``SPATIAL_CHANNELS`` per cell (``latent_dim``, when
    given, must be a multiple of the cell count) and the Gaussian likelihood. Measured on
    `synthetic` (docs/design/colour-vae.md): a dense 32-d code decodes blobs whose class a
    blur-trained teacher keeps for 21 % of images, the 8x8x8 grid for 76 % (8 epochs).

    ``decoder_blocks`` (`VAEConfig.decoder_blocks`): default ``DECODER_BLOCKS`` of the kind.

    Raises:
      ValueError: odd H or W (no stride-2 stage fits): resize the images (``--image-size``).
    """
    h, w, c = validate.image_shape(image_shape, "image_shape")
    stages = min(_stages_for(h, w), _twos(h), _twos(w))
    if stages < 1:
        raise ValueError(f"the VAE halves images with stride-2 convolutions, so it needs even H "
                         f"and W; got {h}x{w}. Resize them (image_size=, --image-size H,W).")
    kind = "grayscale" if c == 1 else "colour"
    blocks = DECODER_BLOCKS[kind] if decoder_blocks is None else decoder_blocks
    if c == 1:
        return VAEConfig(latent_dim=16 if latent_dim is None else latent_dim,
                         features=_STAGE_FEATURES[:stages], image_shape=(h, w, c),
                         decoder_blocks=blocks)
    stages = max(1, stages - 1)
    cells = (h >> stages) * (w >> stages)
    channels = SPATIAL_CHANNELS if latent_dim is None else latent_dim // cells
    if latent_dim is not None and (latent_dim % cells or not channels):
        raise ValueError(f"a colour VAE's latent is a grid of {cells} cells at {h}x{w}: "
                         f"latent_dim must be a multiple of {cells}, got {latent_dim}.")
    return VAEConfig(latent_dim=cells * channels, features=_STAGE_FEATURES[1 : stages + 1],
                     image_shape=(h, w, c), likelihood="gaussian", spatial_latent=channels,
                     decoder_blocks=blocks)


SPATIAL_CHANNELS = 8  # latent channels per grid cell of the colour VAE (`vae_config_for`)
# `VAEConfig.decoder_blocks` of `vae_config_for`'s VAEs, by kind of image (blocks sharpen the
# colour decodings, docs/design/colour-vae.md; MNIST's are sharp without).
DECODER_BLOCKS = {"grayscale": 0, "colour": 0}


class Encoder(nn.Module):
    """images [B, H, W, C] -> (mean [B, Z], logvar [B, Z])."""

    config: VAEConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        for f in self.config.features:
            x = nn.relu(nn.Conv(f, (3, 3), strides=(2, 2))(x))
        if self.config.spatial_latent:  # a code per cell of the grid
            x = nn.relu(nn.Conv(self.config.features[-1], (3, 3))(x))
            c = self.config.spatial_latent
            mean = nn.Conv(c, (1, 1), name="mean")(x).reshape((x.shape[0], -1))
            logvar = nn.Conv(c, (1, 1), name="logvar")(x).reshape((x.shape[0], -1))
            return mean, logvar
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.config.hidden)(x))
        mean = nn.Dense(self.config.latent_dim, name="mean")(x)
        logvar = nn.Dense(self.config.latent_dim, name="logvar")(x)
        return mean, logvar


def pixel_shuffle(x: jax.Array, factor: int = 2) -> jax.Array:
    """[B, H, W, C * f * f] -> [B, H * f, W * f, C]: sub-pixel upsampling (Shi et al. 2016)."""
    b, h, w, c = x.shape
    c //= factor * factor
    x = x.reshape(b, h, w, factor, factor, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * factor, w * factor, c)


class ResidualBlock(nn.Module):
    """[B, H, W, F] -> [B, H, W, F]: relu(x + conv(relu(conv(x)))), 3x3 convs of F channels."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.relu(nn.Conv(x.shape[-1], (3, 3))(x))
        return nn.relu(x + nn.Conv(x.shape[-1], (3, 3))(y))


class Decoder(nn.Module):
    """z [B, Z] -> pixel logits [B, H, W, C] (sigmoid gives the Bernoulli means).

    Each stage doubles H and W with a 3x3 conv to 4x the channels followed by a pixel shuffle:
    the same function class as a stride-2 transposed conv, but ~25x faster on XLA:CPU here.
    """

    config: VAEConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h, w, c = self.config.image_shape
        features = self.config.features
        stride = 2 ** len(features)
        base = (h // stride, w // stride, features[-1])
        if self.config.spatial_latent:
            grid = z.reshape((z.shape[0], *base[:2], self.config.spatial_latent))
            x = nn.relu(nn.Conv(features[-1], (3, 3))(grid))
        else:
            x = nn.relu(nn.Dense(self.config.hidden)(z))
            x = nn.relu(nn.Dense(math.prod(base))(x))
            x = x.reshape((z.shape[0], *base))
        outs = (*reversed(features[:-1]), c)
        for i, f in enumerate(outs):
            for _ in range(self.config.decoder_blocks):
                x = ResidualBlock()(x)
            x = pixel_shuffle(nn.Conv(4 * f, (3, 3))(x))
            if i < len(outs) - 1:
                x = nn.relu(x)
        return x


class VAE(nn.Module):
    """Holds encoder and decoder so that they share one parameter pytree."""

    config: VAEConfig

    def setup(self):
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)

    def __call__(self, x: jax.Array, eps: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        mean, logvar = self.encoder(x)
        z = mean + jnp.exp(0.5 * logvar) * eps
        return self.decoder(z), mean, logvar

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encoder(x)

    def decode(self, z: jax.Array) -> jax.Array:
        return self.decoder(z)


# --------------------------------------------------------------------------------------------
# Attentive surrogate and its explanation network (Sensors 2021, 21(4):1280)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SurrogateConfig(_ClassifierConfig):
    """A student CNN whose every stage is gated by a spatial attention map.

    Attributes:
      num_classes: K.
      features: channels of each stage (3x3 conv, ReLU, attention gate, 2x2 max-pool).
      hidden: width of the dense layer before the logits.
      image_shape: (H, W, C).
    """


class SpatialAttention(nn.Module):
    """features [B, h, w, F] -> attention [B, h, w] in [0, 1] (3x3 conv, ReLU, 1x1 conv,
    sigmoid): one weight per location, shared by all channels."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        a = nn.relu(nn.Conv(max(x.shape[-1] // 4, 4), (3, 3))(x))
        return nn.sigmoid(nn.Conv(1, (1, 1))(a))[..., 0]


class Surrogate(nn.Module):
    """images [B, H, W, C] -> (logits [B, K], attention maps, one [B, h_s, w_s] per stage)."""

    config: SurrogateConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        maps = []
        for i, f in enumerate(self.config.features):
            x = nn.relu(nn.Conv(f, (3, 3), name=f"conv{i}")(x))
            a = SpatialAttention(name=f"attention{i}")(x)
            maps.append(a)
            x = x * a[..., None]
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.config.hidden, name="dense")(x))
        return nn.Dense(self.config.num_classes, name="logits")(x), tuple(maps)


def init_vae(key: jax.Array, config: VAEConfig) -> dict:
    """Fresh VAE parameters for images of shape ``config.image_shape``."""
    validate.config(config, VAEConfig, "config")
    return _init_params(VAE, config, key, ((1, *config.image_shape), (1, config.latent_dim)))


def init_surrogate(key: jax.Array, config: SurrogateConfig) -> dict:
    """Fresh surrogate parameters."""
    validate.config(config, SurrogateConfig, "config")
    return _init_params(Surrogate, config, key, ((1, *config.image_shape),))


def surrogate_forward(params: dict, images: jax.Array, config: SurrogateConfig):
    """Pure surrogate pass: images [B, H, W, C] -> (logits [B, K], tuple of [B, h_s, w_s])."""
    _check_input_shape(images, config.image_shape, "surrogate")
    return Surrogate(config).apply({"params": params}, images)


@dataclasses.dataclass(frozen=True)
class ExplainerConfig:
    """The explanation network: fuses the surrogate's attention maps (upsampled to H x W) and
    the image into one saliency map per class.

    Attributes:
      num_classes: K (one output map per class).
      num_stages: attention maps it fuses (the surrogate's ``len(features)``).
      features: channels of its 3x3 conv layers.
      image_shape: (H, W, C).
    """

    num_classes: int = 10
    num_stages: int = 2
    features: tuple[int, ...] = (32, 32)
    image_shape: tuple[int, int, int] = (28, 28, 1)

    def __post_init__(self):
        validate.fields(self, positive_int=("num_stages",), positive_ints=("features",),
                        image_shape=("image_shape",))
        if validate.integer(self.num_classes, "ExplainerConfig.num_classes") < 2:
            raise ValueError(f"ExplainerConfig.num_classes must be >= 2, got {self.num_classes}.")


class SaliencyNet(nn.Module):
    """The explanation network: (images [B, H, W, C], attention maps) -> saliency logits
    [B, H, W, K] (sigmoid: maps). Its parameters are the ``explainer`` checkpoint's."""

    config: ExplainerConfig

    @nn.compact
    def __call__(self, images: jax.Array, maps: tuple[jax.Array, ...]) -> jax.Array:
        b, h, w, _ = images.shape
        up = [jax.image.resize(m, (b, h, w), method="bilinear") for m in maps]
        x = jnp.concatenate([images, jnp.stack(up, axis=-1)], axis=-1)
        for f in self.config.features:
            x = nn.relu(nn.Conv(f, (3, 3))(x))
        return nn.Conv(self.config.num_classes, (3, 3), name="out")(x)


def init_explainer(key: jax.Array, config: ExplainerConfig) -> dict:
    """Fresh explanation-network parameters."""
    validate.config(config, ExplainerConfig, "config")
    h, w, _ = config.image_shape
    maps = tuple((1, h >> i, w >> i) for i in range(config.num_stages))
    return _init_params(SaliencyNet, config, key, ((1, *config.image_shape), maps))
