"""Decoders f(z; theta) and the architectures that make them.

A decoder maps z of shape (..., z_dim) to (..., out_features), where ``out_features`` is the data
dimension times the number of parameters the likelihood needs per feature (one for Bernoulli
logits or a Gaussian mean, two for a mean and a scale). Leading dimensions are batch dimensions.

An :class:`Architecture` (``--architecture``) is the family of networks of a run: it makes the
decoder of the model and the encoder body of the guide, so the two mirror each other. Its
options (``hidden_dims``, ``activation``) are shared by both networks.
"""

from torch import nn

from models.base.registry import Registry
from models.networks import MLP, ConvDecoder as _ConvNet, ConvEncoder, check_hidden_dims


class MLPDecoder(MLP):
    """f(z; theta) as a multilayer perceptron z_dim -> hidden_dims... -> out_features."""

    def __init__(self, z_dim, hidden_dims, out_features, activation="relu"):
        super().__init__(z_dim, hidden_dims, out_features, activation)
        self.z_dim = z_dim


class LinearDecoder(nn.Linear):
    """f(z) = W z + b. With a standard normal prior and a Gaussian likelihood of fixed sigma this
    makes the VAE probabilistic PCA (Tipping & Bishop 1999), whose log p(x) has a closed form
    (see :mod:`models.linear_gaussian`)."""

    def __init__(self, z_dim, out_features):
        super().__init__(z_dim, out_features)
        self.z_dim = z_dim


class ConvDecoder(_ConvNet):
    """f(z; theta) as dense layers followed by two transposed convolutions, for 28x28 images
    (any height and width divisible by 4); the guide uses the mirrored convolutional encoder."""


class Architecture:
    """Base class of the network families: ``decoder`` for the model, ``encoder`` for the guide.

    :param hidden_dims: hidden layer sizes of the encoder, from the data side; the decoder
        mirrors them.
    :param str activation: the nonlinearity between layers (see ``models.networks.ACTIVATIONS``).
    """

    context_parameters = ()

    def __init__(self, hidden_dims=(512, 256), activation="relu"):
        self.hidden_dims = check_hidden_dims(hidden_dims)
        self.activation = activation

    @classmethod
    def build(cls, context, **options):
        return cls(**options)

    def decoder(self, z_dim, out_features, image_shape=None):
        raise NotImplementedError

    def encoder(self, x_dim, out_features, image_shape=None):
        """The guide's encoder body: x (..., x_dim) -> (..., out_features)."""
        return MLP(x_dim, self.hidden_dims, out_features, self.activation)


class MLPArchitecture(Architecture):
    """Multilayer perceptrons: encoder x_dim -> hidden_dims -> outputs, decoder the mirror."""

    def decoder(self, z_dim, out_features, image_shape=None):
        return MLPDecoder(z_dim, list(reversed(self.hidden_dims)), out_features, self.activation)


class ConvArchitecture(Architecture):
    """Two stride-2 convolutions and a dense layer of ``hidden_dims[0]`` units (256 when empty)
    in the encoder; the transposed mirror in the decoder. For single-channel images whose height
    and width are multiples of 4, such as MNIST."""

    def _hidden(self):
        return self.hidden_dims[0] if self.hidden_dims else 256

    def decoder(self, z_dim, out_features, image_shape=None):
        pixels = _pixels(image_shape)
        if out_features % pixels:
            raise ValueError(f"out_features {out_features} is not a multiple of the {pixels} "
                             "pixels of an image")
        return ConvDecoder(z_dim, image_shape, out_features // pixels, hidden=self._hidden(),
                           activation=self.activation)

    def encoder(self, x_dim, out_features, image_shape=None):
        return ConvEncoder(image_shape, out_features, hidden=self._hidden(),
                           activation=self.activation)


class LinearArchitecture(Architecture):
    """A linear decoder W z + b (probabilistic PCA with a Gaussian likelihood) and an MLP
    encoder of ``hidden_dims``."""

    def decoder(self, z_dim, out_features, image_shape=None):
        return LinearDecoder(z_dim, out_features)


def _pixels(image_shape):
    if not image_shape or len(image_shape) != 2:
        raise ValueError(
            f"the conv architecture needs images whose height and width are multiples of 4 (such "
            f"as MNIST's 28x28), got image shape {image_shape}; use --architecture mlp")
    return int(image_shape[0]) * int(image_shape[1])


ARCHITECTURES = Registry("architecture", {
    "mlp": MLPArchitecture,
    "conv": ConvArchitecture,
    "linear": LinearArchitecture,
}, base=Architecture, allow_custom=True)
