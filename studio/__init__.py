"""SD Studio: a Stable Diffusion studio with local (diffusers) and remote (SageMaker/HTTP) engines."""

__version__ = "0.1.0"
