"""Small neural-network building blocks shared by decoders (models) and encoders (inference)."""

from torch import nn

from models.base.registry import Registry

ACTIVATIONS = Registry("activation", {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
})


def activation_module(name):
    return ACTIVATIONS.get(name)()


def check_hidden_dims(hidden_dims):
    """Hidden layer sizes as a tuple of positive integers (an empty tuple: no hidden layer)."""
    if isinstance(hidden_dims, int):
        hidden_dims = (hidden_dims,)
    sizes = tuple(hidden_dims)
    if not all(isinstance(size, int) and not isinstance(size, bool) and size >= 1
               for size in sizes):
        raise ValueError(f"hidden layer sizes (--hidden-dims) must be positive whole numbers, got "
                         f"{list(sizes)}")
    return sizes


class MLP(nn.Sequential):
    """A multilayer perceptron ``in_features -> hidden_dims... -> out_features``.

    It acts on the last dimension only, so inputs may carry any leading batch dimensions, such as
    (num_particles, batch_size, in_features) during evaluation.
    """

    def __init__(self, in_features, hidden_dims, out_features, activation="relu"):
        layers = []
        sizes = [in_features, *check_hidden_dims(hidden_dims)]
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(n_in, n_out), activation_module(activation)]
        layers.append(nn.Linear(sizes[-1], out_features))
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features


def _check_image_shape(image_shape):
    if not image_shape or len(image_shape) != 2 or any(int(s) % 4 for s in image_shape):
        raise ValueError(
            f"the conv architecture needs images whose height and width are multiples of 4 (such "
            f"as MNIST's 28x28), got image shape {image_shape}; use --architecture mlp")
    return tuple(int(s) for s in image_shape)


class ConvEncoder(nn.Module):
    """A small convolutional encoder for single-channel images given as flat vectors:
    (..., H * W) -> two stride-2 convolutions (32 and 64 channels) -> a dense layer -> out_features.
    Leading batch dimensions are kept, as with :class:`MLP`."""

    def __init__(self, image_shape, out_features, hidden=256, activation="relu", channels=(32, 64)):
        super().__init__()
        self.image_shape = _check_image_shape(image_shape)
        height, width = self.image_shape
        self.in_features = height * width
        self.out_features = out_features
        self.body = nn.Sequential(
            nn.Conv2d(1, channels[0], 4, stride=2, padding=1), activation_module(activation),
            nn.Conv2d(channels[0], channels[1], 4, stride=2, padding=1),
            activation_module(activation),
            nn.Flatten(),
            nn.Linear(channels[1] * (height // 4) * (width // 4), hidden),
            activation_module(activation),
            nn.Linear(hidden, out_features))

    def forward(self, x):
        lead = x.shape[:-1]
        images = x.reshape(-1, 1, *self.image_shape)
        return self.body(images).reshape(*lead, self.out_features)


class ConvDecoder(nn.Module):
    """The mirror of :class:`ConvEncoder`: (..., z_dim) -> dense layers -> two stride-2 transposed
    convolutions -> (..., params_per_pixel * H * W), laid out as ``params_per_pixel`` consecutive
    blocks of H * W values (the layout the likelihoods split)."""

    def __init__(self, z_dim, image_shape, params_per_pixel=1, hidden=256, activation="relu",
                 channels=(64, 32)):
        super().__init__()
        self.image_shape = _check_image_shape(image_shape)
        height, width = self.image_shape
        self.z_dim = z_dim
        self.out_features = params_per_pixel * height * width
        self.dense = nn.Sequential(
            nn.Linear(z_dim, hidden), activation_module(activation),
            nn.Linear(hidden, channels[0] * (height // 4) * (width // 4)),
            activation_module(activation))
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(channels[0], channels[1], 4, stride=2, padding=1),
            activation_module(activation),
            nn.ConvTranspose2d(channels[1], params_per_pixel, 4, stride=2, padding=1))
        self._channels = channels[0]

    def forward(self, z):
        lead = z.shape[:-1]
        height, width = self.image_shape
        hidden = self.dense(z.reshape(-1, self.z_dim))
        maps = hidden.reshape(-1, self._channels, height // 4, width // 4)
        return self.deconv(maps).reshape(*lead, self.out_features)
