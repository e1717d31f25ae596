"""Inference: batched generation engine over the latent KV cache, and per-sample text streaming."""
