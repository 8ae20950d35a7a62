"""widefunnel: multi-task, multi-head retrieval served as one Triton ensemble."""
__version__ = "0.1.0"
