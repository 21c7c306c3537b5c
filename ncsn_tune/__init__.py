"""ncsn_tune: noise scales, step sizes and training for score-based generative models (NCSNv2)."""

__version__ = "0.1.0"
