"""trio_p2p: peer-to-peer messaging on a local network, built on Trio.

Peers find each other by UDP broadcast, talk over direct TCP connections,
exchange typed CBOR messages, and report everything to the application on one
event channel. Start with :func:`open_messenger`.
"""

from ._config import Config as Config
from ._errors import DeliveryError as DeliveryError
from ._errors import HandshakeError as HandshakeError
from ._errors import PeerNotConnectedError as PeerNotConnectedError
from ._errors import ProtocolError as ProtocolError
from ._errors import TransferError as TransferError
from ._errors import TrioP2PError as TrioP2PError
from ._events import DeliveryFailed as DeliveryFailed
from ._events import Direction as Direction
from ._events import Error as Error
from ._events import Event as Event
from ._events import FileOffered as FileOffered
from ._events import FileTransferCompleted as FileTransferCompleted
from ._events import FileTransferFailed as FileTransferFailed
from ._events import FileTransferProgress as FileTransferProgress
from ._events import FileTransferStarted as FileTransferStarted
from ._events import MessageReceived as MessageReceived
from ._events import PeerConnected as PeerConnected
from ._events import PeerDisconnected as PeerDisconnected
from ._events import PeerDiscovered as PeerDiscovered
from ._events import PeerInfo as PeerInfo
from ._events import PeerLost as PeerLost
from ._events import Transfer as Transfer
from ._identity import Identity as Identity
from ._identity import IdentityError as IdentityError
from ._identity import IdentityInUseError as IdentityInUseError
from ._messages import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._messages import Content as Content
from ._messages import Message as Message
from ._messages import Text as Text
from ._messenger import Messenger as Messenger
from ._messenger import open_messenger as open_messenger
from ._stats import Statistics as Statistics
from ._version import __version__ as __version__

__all__ = [
    "PROTOCOL_VERSION",
    "Config",
    "Content",
    "DeliveryError",
    "DeliveryFailed",
    "Direction",
    "Error",
    "Event",
    "FileOffered",
    "FileTransferCompleted",
    "FileTransferFailed",
    "FileTransferProgress",
    "FileTransferStarted",
    "HandshakeError",
    "Identity",
    "IdentityError",
    "IdentityInUseError",
    "Message",
    "MessageReceived",
    "Messenger",
    "PeerConnected",
    "PeerDisconnected",
    "PeerDiscovered",
    "PeerInfo",
    "PeerLost",
    "PeerNotConnectedError",
    "ProtocolError",
    "Statistics",
    "Text",
    "Transfer",
    "TransferError",
    "TrioP2PError",
    "__version__",
    "open_messenger",
]
