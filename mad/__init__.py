"""mad: a simulator of self-consuming generative loops (Model Autophagy Disorder)."""

__version__ = "0.1.0"
