"""The blind relay: authenticates agents by their keys, routes sealed frames, queues them for absent agents.

An ASGI application (`app.RelayApp`) served by hypercorn on trio (`server.serve_relay`), with its
state in SQLite (`store.RelayStore`). It never holds a private key and never sees a plaintext.
"""
