"""The cpml-worker daemon: holds the shares of the jobs it serves and computes f on request."""
