"""The transport layer: the edge where bytes from clients become typed requests and back.

- ``frames``: the wire protocol as plain code with no I/O. ``frames.parse`` turns a client
  frame into a frozen request dataclass or raises ``frames.ProtocolError``; the serializers
  turn records from ``chatd.models`` into frame bytes, encoded once so fan-out can write the
  same bytes to many sockets. Tested without any socket.
- ``ws``: the WebSocket endpoint ``/ws``: the loop that authenticates a connection with
  ``hello``, feeds each frame to ``frames.parse``, calls the service and writes the replies
  and events ``frames`` builds.
- ``http``: the HTTP handlers of ``/api/v1`` (users, sessions, history, media, push
  subscriptions) and the health and metrics endpoints.

The transport validates shapes and limits and maps errors to the protocol's codes; it holds no
chat rules (the service does) and never talks to a backend directly.
"""
