"""A TCP proxy on 127.0.0.1 that can cut its upstream on demand (a plain module, not a conftest).

Put it in front of a server (the moto S3 server of ``helpers.moto_s3``) and point clients at
:attr:`TcpProxy.url`; :meth:`TcpProxy.cut` then simulates an outage of the endpoint:

- ``"reset"``: every open connection is reset (RST) and new ones are reset on accept, as a
  dropped route does;
- ``"refuse"``: every open connection is reset and new ones are refused (nothing listens),
  as a crashed server does;
- ``"hang"``: open connections stop carrying bytes and new ones are accepted but never
  answered, as a black-holed network does (clients hit their timeouts; botocore's PUTs,
  which ask ``Expect: 100-continue``, wait for ever with aiohttp).

:meth:`TcpProxy.arm` cuts at a precise point instead: when the N-th request matching a
pattern (``rb"PUT /bucket/store/labels/c/"``) reaches the proxy, before it is forwarded;
:meth:`TcpProxy.delay` holds matching requests for a while (a slow link, to order races).
:meth:`TcpProxy.restore` forwards again (connections held by a hang are reset).
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import struct
import threading


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    """Forward 127.0.0.1:``port`` to ``upstream`` until told otherwise.

    Use as a context manager (or call :meth:`close`): it stops its threads and closes
    every socket it opened.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.mode = "forward"
        self.accepted = 0
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        self._trigger: tuple[re.Pattern, int, str] | None = None
        self._delay: tuple[re.Pattern, int, float] | None = None
        self.tripped = threading.Event()
        self.port = 0
        self._listener: socket.socket | None = self._listen()
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True, name="tcpproxy-accept")
        self._thread.start()

    def _listen(self) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(0.05)
        return listener

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self, mode: str = "reset") -> None:
        """Stop forwarding: ``"reset"`` or ``"refuse"`` connections, or ``"hang"`` them."""
        if mode not in ("reset", "refuse", "hang"):
            raise ValueError(f"unknown mode {mode!r}")
        with self._lock:
            self.mode = mode
            pairs = [] if mode == "hang" else list(self._pairs)
            if mode != "hang":
                self._pairs.clear()
            listener = self._listener if mode == "refuse" else None
            if listener is not None:
                self._listener = None
        if listener is not None:
            listener.close()
        for a, b in pairs:
            _reset(a)
            _reset(b)

    def arm(self, pattern: bytes, *, after: int = 1, mode: str = "reset") -> None:
        """Cut (``mode``) when the ``after``-th client request matching the regular
        expression ``pattern`` arrives; that request is not forwarded. :attr:`tripped`
        is set then."""
        with self._lock:
            self._trigger = (re.compile(pattern), after, mode)
            self.tripped.clear()

    def delay(self, pattern: bytes, seconds: float, *, after: int = 1) -> None:
        """Hold every client request matching ``pattern``, from the ``after``-th on, for
        ``seconds`` before forwarding it."""
        with self._lock:
            self._delay = (re.compile(pattern), after, seconds)

    def _hold(self, data: bytes) -> None:
        with self._lock:
            if self._delay is None:
                return
            pattern, left, seconds = self._delay
            n = len(pattern.findall(data))
            if not n:
                return
            left -= n
            self._delay = (pattern, left, seconds)
        if left <= 0:
            self._closed.wait(seconds)

    def _matches(self, data: bytes) -> bool:
        with self._lock:
            if self._trigger is None:
                return False
            pattern, left, mode = self._trigger
            left -= len(pattern.findall(data))
            if left > 0:
                self._trigger = (pattern, left, mode)
                return False
            self._trigger = None
        self.cut(mode)
        self.tripped.set()
        return True

    def restore(self) -> None:
        """Forward again; connections held by a hang are reset."""
        with self._lock:
            self.mode = "forward"
            held, self._held = self._held, []
            pairs = list(self._pairs)
            self._pairs.clear()
            if self._listener is None:
                self._listener = self._listen()
        for s in held:
            _reset(s)
        for a, b in pairs:  # frozen mid-request: their clients gave up or will retry
            _reset(a)
            _reset(b)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self.cut("refuse")
        with self._lock:
            held, self._held = self._held, []
        for s in held:
            _reset(s)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _accept(self) -> None:
        while not self._closed.is_set():
            listener = self._listener
            if listener is None:  # refusing
                self._closed.wait(0.05)
                continue
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            with self._lock:
                mode = self.mode
                if mode == "hang":
                    self._held.append(client)
                    continue
            if mode == "reset":
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _reset(client)
                continue
            pair = (client, upstream)
            with self._lock:
                self._pairs.add(pair)
            threading.Thread(
                target=self._pump, args=(pair,), daemon=True, name="tcpproxy-pump"
            ).start()

    def _pump(self, pair: tuple[socket.socket, socket.socket]) -> None:
        client, upstream = pair
        other = {client: upstream, upstream: client}
        try:
            while not self._closed.is_set():
                with self._lock:
                    if pair not in self._pairs:
                        return
                    frozen = self.mode == "hang"
                if frozen:  # bytes stay unread: the peers see a silent network
                    self._closed.wait(0.05)
                    continue
                ready, _, _ = select.select([client, upstream], [], [], 0.05)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is client:
                        if self._matches(data):
                            return
                        self._hold(data)
                    other[s].sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            with self._lock:
                mine = pair in self._pairs
                self._pairs.discard(pair)
            if mine:
                for s in pair:
                    with contextlib.suppress(OSError):
                        s.close()
