"""The top layer: the `widefunnel` command line and the local sharded cluster it starts."""

from widefunnel.cli.main import main

__all__ = ["main"]
