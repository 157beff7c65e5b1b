"""TLS for the server port: certificates on disk (given, or self-signed once) loaded into an SSL context.

Start-up only: nothing here does network I/O. The server (:mod:`avatard.server.websocket`) wraps each
accepted connection in ``trio.SSLStream`` with the context :func:`certificate.load` builds.
"""
