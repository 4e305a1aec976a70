"""alignkit: representation alignment for PyTorch.

``alignkit.functional`` holds the math (every loss and metric as a pure function),
``alignkit.losses`` thin ``nn.Module`` wrappers with a name registry.
"""

__version__ = "0.1.0"
