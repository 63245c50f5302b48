"""smagent keeps configuration files filled with secrets from secret stores."""

__version__ = "0.1.0"
