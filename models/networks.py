"""Small neural-network building blocks shared by decoders (models) and encoders (inference)."""

from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
}


def activation_module(name):
    from models.registry import lookup

    return lookup(ACTIVATIONS, name, "activation")()


class MLP(nn.Sequential):
    """A multilayer perceptron ``in_features -> hidden_dims... -> out_features``.

    It acts on the last dimension only, so inputs may carry any leading batch dimensions, such as
    (num_particles, batch_size, in_features) during evaluation.
    """

    def __init__(self, in_features, hidden_dims, out_features, activation="relu"):
        layers = []
        sizes = [in_features, *hidden_dims]
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(n_in, n_out), activation_module(activation)]
        layers.append(nn.Linear(sizes[-1], out_features))
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features
