"""Adapters behind the engine's ports (:mod:`mobility.ports`), one folder, like httpx's
transports: ``lab`` (pods on lab nodes, reached through node agents), ``unavailable`` (what a
backend cannot do), and ``kube/`` (client, objects, membership, KubeFed, Karmada, NSM), the only
place the kubernetes client is imported."""
