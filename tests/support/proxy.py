"""A TCP proxy on 127.0.0.1 for connection faults: cut every connection after N bytes from the server, or
freeze (stop forwarding without closing, as a peer that vanished does)."""

from __future__ import annotations

import contextlib
import socket
import threading

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards ``127.0.0.1:port`` → ``target``; ``cut_after`` bytes server→client end a connection (both
    sockets closed, once: later connections pass untouched); :meth:`freeze` stops all forwarding."""

    def __init__(self, target: str, cut_after: int | None = None) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self.cut_after = cut_after
        self.cuts = 0
        self._frozen = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.target = f"127.0.0.1:{self.port}"
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def freeze(self) -> None:
        self._frozen.set()

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            self._sockets += [client, server]
            budget = self.cut_after if self.cuts == 0 else None
            threading.Thread(target=self._pipe, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, budget), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, budget: int | None) -> None:
        sent = 0
        try:
            while data := source.recv(65536):
                if self._frozen.is_set():
                    self._frozen.wait()
                    while True:  # swallow everything, answer nothing
                        if not source.recv(65536):
                            return
                if budget is not None and sent + len(data) >= budget:
                    sink.sendall(data[:budget - sent])
                    self.cuts += 1
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
