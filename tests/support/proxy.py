"""The TCP proxy for connection faults (cut after N bytes, freeze): bench/traffic.py's, which bench/soak.py
uses too."""

from __future__ import annotations

from traffic import TcpProxy

__all__ = ["TcpProxy"]
