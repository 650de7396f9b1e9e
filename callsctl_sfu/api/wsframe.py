"""One unmasked, unfragmented WebSocket text frame (RFC 6455 §5.2), built once and shared.

A server's frames are never masked (§5.1), so the frame of an uncompressed text
message is the same bytes for every receiver: a broadcast builds it once and
writes it to each connection's transport (api/signaling.py). Connections that
negotiated permessage-deflate cannot share frames; the server does not offer it
for signaling (small JSON events; see api/signaling.py).
"""

from __future__ import annotations

import struct

_OPCODE_TEXT_FIN = 0x81  # FIN=1, RSV=0, opcode 0x1 (text)


def text_frame(text: str) -> bytes:
    payload = text.encode("utf-8")
    size = len(payload)
    if size < 126:
        header = bytes((_OPCODE_TEXT_FIN, size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", _OPCODE_TEXT_FIN, 126, size)
    else:
        header = struct.pack("!BBQ", _OPCODE_TEXT_FIN, 127, size)
    return header + payload
