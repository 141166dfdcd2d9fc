"""Networks, engines, tiling and evaluation. Knows nothing of HTTP or queues."""
