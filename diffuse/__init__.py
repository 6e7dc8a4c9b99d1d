"""diffuse: train, sample and evaluate image diffusion models from Hydra-composed YAML experiments."""

__version__ = "0.1.0"


class DiffuseError(Exception):
    """A user-facing error: the CLI prints its message as one line and exits non-zero."""
