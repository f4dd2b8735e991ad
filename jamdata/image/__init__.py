"""Image tokenization: preprocessing and the VQ-VAE."""
