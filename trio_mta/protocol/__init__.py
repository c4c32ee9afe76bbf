"""Sans-I/O SMTP for both roles: no sockets, no trio, no clock.

The server role turns the client's bytes into events and our replies into bytes
(``ServerConnection``); the client role frames commands and parses replies
(``ClientConnection``). See ``_server.py`` for the theory of operation.
"""

from . import _replies as replies  # noqa: F401  # the catalogue, as protocol.replies
from ._address import VERP_DEFAULT_DELIMITERS as VERP_DEFAULT_DELIMITERS
from ._address import VERP_DELIMITER_CHARS as VERP_DELIMITER_CHARS
from ._address import Address as Address
from ._address import AddressError as AddressError
from ._address import MailParams as MailParams
from ._address import RcptParams as RcptParams
from ._address import parse_path as parse_path
from ._address import verp_delimiters_ok as verp_delimiters_ok
from ._address import xtext_decode as xtext_decode
from ._client import Capabilities as Capabilities
from ._client import ClientConnection as ClientConnection
from ._client import ReplySyntaxError as ReplySyntaxError
from ._client import dot_stuff as dot_stuff
from ._client import parse_ehlo as parse_ehlo
from ._events import NEED_DATA as NEED_DATA
from ._events import Auth as Auth
from ._events import AuthResponse as AuthResponse
from ._events import BdatCommand as BdatCommand
from ._events import ConnectionClosed as ConnectionClosed
from ._events import DataChunk as DataChunk
from ._events import DataCommand as DataCommand
from ._events import EndOfChunk as EndOfChunk
from ._events import EndOfData as EndOfData
from ._events import Event as Event
from ._events import Expn as Expn
from ._events import Helo as Helo
from ._events import Help as Help
from ._events import MailFrom as MailFrom
from ._events import NeedData as NeedData
from ._events import Noop as Noop
from ._events import Quit as Quit
from ._events import RcptTo as RcptTo
from ._events import Rejected as Rejected
from ._events import Rset as Rset
from ._events import StartTLS as StartTLS
from ._events import Unrecognized as Unrecognized
from ._events import Vrfy as Vrfy
from ._replies import Reply as Reply
from ._replies import reply as reply
from ._server import LocalProtocolError as LocalProtocolError
from ._server import ServerConnection as ServerConnection
from ._state import BareLineEndingPolicy as BareLineEndingPolicy
from ._state import ProtocolLimits as ProtocolLimits
from ._state import State as State
from ._verp import VerpAddress as VerpAddress
from ._verp import make_address as make_address
from ._verp import verp_decodable as verp_decodable
from ._verp import verp_decode as verp_decode
from ._verp import verp_encode as verp_encode
