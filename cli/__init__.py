"""The ``megasr`` command line. Commands import their heavy parts (torch, the service) lazily."""
