"""jamdata: data preparation for mixed-modal (text + image) autoregressive models."""

__version__ = "0.1.0"
