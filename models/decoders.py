"""Decoders f(z; theta): networks from the latent blueprint z to the parameters of p(x | z).

A decoder maps z of shape (..., z_dim) to (..., out_features), where ``out_features`` is the data
dimension times the number of parameters the likelihood needs per feature (one for Bernoulli
logits or a Gaussian mean, two for a mean and a scale). Leading dimensions are batch dimensions.
"""

from torch import nn

from models.networks import MLP, ConvDecoder as _ConvNet


class MLPDecoder(MLP):
    """f(z; theta) as a multilayer perceptron z_dim -> hidden_dims... -> out_features."""

    def __init__(self, z_dim, hidden_dims, out_features, activation="relu"):
        super().__init__(z_dim, hidden_dims, out_features, activation)
        self.z_dim = z_dim

    @classmethod
    def from_config(cls, config, out_features):
        # The decoder mirrors the encoder: its hidden sizes are the encoder's, reversed.
        hidden_dims = list(reversed(config["hidden_dims"]))
        return cls(config["z_dim"], hidden_dims, out_features, config.get("activation", "relu"))


class LinearDecoder(nn.Linear):
    """f(z) = W z + b. With a standard normal prior and a Gaussian likelihood of fixed sigma this
    makes the VAE probabilistic PCA (Tipping & Bishop 1999), whose log p(x) has a closed form
    (see :mod:`models.linear_gaussian`)."""

    def __init__(self, z_dim, out_features):
        super().__init__(z_dim, out_features)
        self.z_dim = z_dim

    @classmethod
    def from_config(cls, config, out_features):
        return cls(config["z_dim"], out_features)


class ConvDecoder(_ConvNet):
    """f(z; theta) as dense layers followed by two transposed convolutions, for 28x28 images
    (any height and width divisible by 4); the guide uses the mirrored convolutional encoder."""

    @classmethod
    def from_config(cls, config, out_features):
        image_shape = config.get("image_shape")
        pixels = int(config["x_dim"])
        if out_features % pixels:
            raise ValueError(f"out_features {out_features} is not a multiple of x_dim {pixels}")
        return cls(config["z_dim"], image_shape, out_features // pixels,
                   hidden=config["hidden_dims"][0] if config.get("hidden_dims") else 256,
                   activation=config.get("activation", "relu"))


DECODERS = {
    "mlp": MLPDecoder,
    "conv": ConvDecoder,
    "linear": LinearDecoder,
}
