"""The domain and the move engine.

``models``, ``phases``, ``planning``, ``ports`` and ``errors`` are the pure core: they import no
framework, client or netlink library (import-linter holds them to it). ``registry`` and ``keys``
are the Redis adapter; ``moving`` runs the phases against the ports; ``federation`` holds the
placement backends.
"""
