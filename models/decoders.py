"""Decoders f(z; theta): networks from the latent blueprint z to the parameters of p(x | z).

A decoder maps z of shape (..., z_dim) to (..., out_features), where ``out_features`` is the data
dimension times the number of parameters the likelihood needs per feature (one for Bernoulli
logits or a Gaussian mean, two for a mean and a scale). Leading dimensions are batch dimensions.
"""

from torch import nn

from models.networks import MLP


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


DECODERS = {
    "mlp": MLPDecoder,
    "linear": LinearDecoder,
}
