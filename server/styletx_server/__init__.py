"""The styletx gRPC service (``styletx.v1.StyleTransfer``): validation, job queue, events, health, metrics.

Run it with ``styletx-server``; embed it with :class:`styletx_server.app.StyletxServer`; run the same request path
without gRPC with :class:`styletx_server.local.LocalBackend` (what ``styletx stylize`` uses without ``--server``).
"""
