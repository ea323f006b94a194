"""The HTTP API (FastAPI): moves, services, clusters, health, move events as SSE."""
