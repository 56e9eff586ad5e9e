"""Remote GPU worker: run the engine on another machine, keep capture, preview and sinks local.

``avatarcam serve`` runs a :class:`~avatarcam.remote.server.Worker`; ``avatarcam run --worker
HOST:PORT`` uses a :class:`~avatarcam.remote.client.RemoteEngine`, which is an ordinary
:class:`~avatarcam.engines.base.Engine` to the rest of the pipeline.

Why ZeroMQ (pyzmq) rather than WebSocket or gRPC:

- The traffic is small binary messages in both directions, many per second, where only the
  newest matters. ZeroMQ gives whole messages (multipart: a msgpack header plus raw image bytes,
  no copying into a text or protobuf envelope), while a WebSocket server would need us to write
  the connection handling, and gRPC streams bring code generation and HTTP/2 flow control that
  queues stale frames behind fresh ones.
- ROUTER on the worker / DEALER per client gives asynchronous request/reply with many clients on
  one socket, each addressed by its routing id, so fair scheduling is a plain loop over clients.
- Reconnection after a worker restart or a network drop is automatic (the client socket keeps
  redialling), ZMTP heartbeats detect half-open connections, and ``MAXMSGSIZE`` drops a peer
  that sends an oversized part before it is buffered.
- Encryption is built in (CurveZMQ: ``avatarcam serve --curve-keys DIR``), with no certificate
  authority to set up: the client needs only the worker's public key. The token, sent in every
  request, authenticates clients on top of it (and alone on a trusted LAN or over a VPN).
- pyzmq ships wheels with libzmq (CURVE included) for Linux, macOS and Windows.
"""
from avatarcam.remote.client import RemoteAvatar, RemoteEngine
from avatarcam.remote.server import Worker, WorkerConfig

__all__ = ["RemoteAvatar", "RemoteEngine", "Worker", "WorkerConfig"]
