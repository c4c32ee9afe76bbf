"""The daemon's control socket and its state-directory lock.

The daemon serves ``<var_dir>/control.sock`` (a Unix stream socket, mode 0600): newline-delimited
JSON, one request ``{"cmd": "<name>", ...args}`` per line, one reply per line, ``{"ok": true,
"result": ...}`` or ``{"ok": false, "error": "<one line>"}``. The rooms register their commands
on the ``ControlServer`` (app.py wires them); the CLI uses ``request`` and the admin child
process ``arequest``. ``VarDirLock`` keeps a second daemon off a state directory in use.
"""

from ._client import ControlError as ControlError
from ._client import NotRunning as NotRunning
from ._client import arequest as arequest
from ._client import request as request
from ._lock import AlreadyRunning as AlreadyRunning
from ._lock import VarDirLock as VarDirLock
from ._lock import lock_path as lock_path
from ._server import ControlServer as ControlServer
from ._server import Handler as Handler
from ._wire import MAX_REQUEST as MAX_REQUEST
from ._wire import socket_path as socket_path
