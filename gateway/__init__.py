"""A hardened front for tritonserver 2.51: refuses what would crash or bloat the server, forwards the rest."""
