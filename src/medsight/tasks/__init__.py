"""One module per task; each supplies network, loss, metrics and post-processing."""
