"""Run moto's S3 server (``python tests/media/moto_server.py -H 127.0.0.1 -p PORT``).

The same as ``python -m moto.server`` except for one header: werkzeug's development server adds
its own ``Server`` header next to the ``Server: AmazonS3`` that moto sets, and aiohttp's strict
parser (on under ``PYTHONASYNCIODEBUG=1``, as in ``make test``) refuses a response with two.
Real S3 and MinIO send one, so the test double is made to send one too.
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler

from moto.server import main


def _send_response_without_server_header(
    self: BaseHTTPRequestHandler, code: int, message: str | None = None
) -> None:
    self.log_request(code)
    self.send_response_only(code, message)
    self.send_header("Date", self.date_time_string())


BaseHTTPRequestHandler.send_response = _send_response_without_server_header  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
