"""The ``mobility`` command: the lab, the local control plane, the demo, and an API client."""
