"""Latent <-> image: tiled and chunked VAE decoding and encoding."""
