"""Concept forgetting on text-to-image Stable Diffusion: models, prompts, sampling, the concept context and driver."""
