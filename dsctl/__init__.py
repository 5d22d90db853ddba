"""dsctl: build a DeepSeek-V3/R1-style model end to end from the command line."""

__version__ = "0.1.0"
