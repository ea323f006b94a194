"""The domain and the move engine.

``models``, ``phases``, ``planning``, ``ports``, ``node_ops`` and ``errors`` are the pure core:
they import no framework, client or netlink library (import-linter holds them to it).
``store`` and ``keys`` are the Redis side; ``moving`` runs the phases against the ports;
``backends`` holds the adapters behind the ports (the lab, KubeFed, Karmada, NSM).
"""
