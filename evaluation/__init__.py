"""Offline evaluation: recall of each head and of the merge on a time split (`offline`), and the whole funnel
in one process (`pipeline.InProcessFunnel`), the peer that benchmarks and tests compare the server with."""
