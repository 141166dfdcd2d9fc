"""The HTTP gateway: FastAPI routes, the web page, metrics. Never imports torch."""

from megasr.service.app import create_app

__all__ = ["create_app"]
