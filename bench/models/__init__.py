"""Networks: diffusion U-Nets, checkpoint formats, classifiers."""
