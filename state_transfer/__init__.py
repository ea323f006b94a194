"""State transfer over Redis, and the SDK an application embeds.

- :mod:`state_transfer.store`: the application's state, a mapping with a version counter and
  dirty-key tracking (values are msgpack-able).
- :mod:`state_transfer.directory`: the same interface over a directory of files.
- :mod:`state_transfer.frames`: msgpack frames, chunked, authenticated and encrypted with
  AES-GCM under a per-move key that never sits in Redis.
- :mod:`state_transfer.channel`: one Redis stream per move, with bounded bytes in flight and
  sequence checks (a corrupt, missing or replayed frame is an error, never a silent one).
- :mod:`state_transfer.agent`: what the application serves to the orchestrator on a Unix
  socket: ``open``, ``freeze``, ``snapshot``, ``restore``, ``resume``, ``close``, ``status``.
- :mod:`state_transfer.local`: the in-container half: an application in a container serves
  only its state, on a local socket (``status``, ``digest``, ``freeze``, ``resume``,
  ``changes``, ``apply``), and holds neither the move's key nor Redis credentials; it needs
  only the standard library and msgpack (with ``store``, ``directory``, ``states``,
  ``messages``, ``serving`` and ``errors``).
- :mod:`state_transfer.relay`: the outside half: serves the orchestrator's protocol for such
  an application (``python -m state_transfer.relay --app APP_SOCKET --listen SOCKET``).
- :mod:`state_transfer.control`: the orchestrator's client for that socket.
"""
