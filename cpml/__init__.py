"""cpml: private training on machines you do not trust (CodedPrivateML and weighted distributed DP)."""

__version__ = "0.1.0"
