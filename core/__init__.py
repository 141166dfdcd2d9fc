"""MegaSR: real-world image super-resolution as a service.

The import package ``megasr`` is the shared core (settings, errors, image decoding and
encoding, the CLI). ``megasr.model`` holds the networks and engines (torch);
``megasr.worker`` and ``megasr.service`` are the queue consumer and the HTTP gateway.
"""

__version__ = "0.1.0"
