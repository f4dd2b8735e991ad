"""jamtrain: JAM models (Uniform / Width / Cross fusions), the cross-attention kernel, and training."""

from jamdata import __version__  # noqa: F401  (one version for the whole package)
