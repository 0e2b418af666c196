"""Self-hosted webhook gateway for trading platforms (MetaCopier, PipSync, TradrAPI)."""

__version__ = "0.1.0"
