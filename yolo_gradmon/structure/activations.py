"""The one registry of activation types, by ``torch.nn`` class name (no torch import: the rules use it too).

- :data:`ELEMENTWISE`: elementwise activations whose flat regions activation health measures;
- :data:`SATURATING`: two-tailed ones (both tails flat; derivative <= 1 everywhere, Sigmoid's <= 0.25): on a path to
  the head they attenuate the gradient layer after layer;
- :data:`SWAPPABLE`: what an ablation recognises as an activation to replace (the elementwise ones plus the
  learnable-slope ReLUs).
"""

ELEMENTWISE: tuple[str, ...] = (
    "ReLU", "ReLU6", "LeakyReLU", "SiLU", "Sigmoid", "Tanh", "Hardsigmoid", "Hardswish", "Hardtanh",
    "GELU", "Mish", "ELU", "CELU", "SELU", "Softplus", "Softsign", "LogSigmoid", "Tanhshrink",
)
SATURATING: frozenset[str] = frozenset({"Sigmoid", "Tanh", "Hardsigmoid", "Hardtanh", "Softsign", "LogSigmoid"})
SWAPPABLE: tuple[str, ...] = ELEMENTWISE + ("PReLU", "RReLU")

