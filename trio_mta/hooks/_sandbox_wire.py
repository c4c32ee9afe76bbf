"""The sandbox's wire format, shared by the pool (parent) and its workers.

One Unix stream socket pair per worker carries every call on that worker, multiplexed by call
id. A frame is a ``>I`` length and a payload whose first byte says what it is.

Parent to worker (the trusted side, so the body is a pickle): ``CALL`` (call id, how to run it,
plugin token, length of the plugin's spec, sent once per worker, then the spec and the body),
``CANCEL`` (call id).

Worker to parent (never unpickled: what ran next to plugin code sends JSON or fixed fields):
``READY`` (pid), ``REPLY`` (call id, then the JSON reply), ``CANCELLED`` (call id, and whether
the call is still running in a thread that cannot be stopped), ``STALLED`` (call id, and
whether it holds the worker's event loop, so that every other call there is stuck behind it).
"""

from __future__ import annotations

import struct

FRAME = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024

# Parent to worker: kind, call id, mode, plugin token, spec length.
REQUEST_HEAD = struct.Struct(">BIBII")
CALL = 1
CANCEL = 2

# How a worker runs a call. Async hooks run as tasks of the worker's Trio loop (an awaiting hook
# holds nothing). A sync hook runs INLINE on the loop when the parent gave it a worker of its own
# (cheapest: no thread hop), or in one of the worker's THREADs when it shares the worker.
TASK = 0
INLINE = 1
THREAD = 2

# Worker to parent.
NOTE = struct.Struct(">cIB")  # kind, call id (or pid for READY), flag
READY = b"Y"
REPLY = b"R"
CANCELLED = b"K"
STALLED = b"S"
REPLY_HEAD = struct.Struct(">cI")


def frame(payload: bytes) -> bytes:
    return FRAME.pack(len(payload)) + payload


def split_frames(buffer: bytearray) -> list[bytes]:
    """Every complete frame at the start of ``buffer``, removed from it."""
    frames: list[bytes] = []
    start, size = 0, len(buffer)
    while size - start >= FRAME.size:
        (length,) = FRAME.unpack_from(buffer, start)
        if length > MAX_FRAME:
            raise ValueError(f"a {length}-byte frame")
        end = start + FRAME.size + length
        if end > size:
            break
        frames.append(bytes(buffer[start + FRAME.size : end]))
        start = end
    if start:
        del buffer[:start]
    return frames
