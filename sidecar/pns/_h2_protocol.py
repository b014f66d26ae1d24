"""What we ask of h2 beyond its defaults, and what we check before it sees a request.

Kept apart from the connection logic because every line here is about h2's
cost or h2's gaps, measured on our workload (~5,000 small requests/s).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.exceptions
import hpack
import hpack.table

try:  # jh2's HPACK codec, in Rust (jh2 is h2's maintained fork; only its codec is used)
    from jh2._hazmat import Decoder as _RustDecoder
    from jh2._hazmat import Encoder as _RustEncoder
    from jh2._hazmat import HPACKError as _RustHPACKError
    from jh2._hazmat import OversizedHeaderListError as _RustOversizedHeaderList
except ImportError:  # pragma: no cover - jh2 is a dependency; the pure-Python codec still works
    _RustEncoder = _RustDecoder = None

from ._h2_errors import InvalidRequest

# No outbound normalization: it costs ~30% of the CPU of a request and marks
# ``authorization`` never-indexed, so the same 200-byte JWT would be Huffman-
# coded into every request.  APNs' JWT is one value for 40 minutes and the
# headers carry nothing an attacker could use as a compression oracle, so we
# let HPACK index it.  h2's outbound validation does not look at names or
# characters, so check_headers() does; callers send lower-case names.
H2_CONFIG = h2.config.H2Configuration(
    client_side=True, normalize_outbound_headers=False,
    # check_headers() below validates what we send, once per request; h2's own
    # outbound validation costs about 7% of a push's CPU time.
    validate_outbound_headers=False,
    # What the server sends IS validated, by decode_response_headers() below,
    # in one pass: h2's chain of ten generators per header block (validation
    # plus utf-8 decoding) cost ~8% of a push's CPU time.  Hence no
    # header_encoding: h2 hands us bytes.
    validate_inbound_headers=False, normalize_inbound_headers=False,
)

Header = tuple[str, str]

_PRUNE_EVERY = 256

# RFC 9113 section 8.2.1: what h2 checks on received headers but not on sent
# ones.  A bad header would make the server kill the whole connection.
_VALID_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+\Z").match
_BAD_CHAR = re.compile(r"[\x00\r\n]").search
_BLANKS = (" ", "\t")
# Connection-specific headers (RFC 9113 8.2.2), and "host": we always send :authority.
_FORBIDDEN_NAMES = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "host"}
)
# The same rules for what the server sends (bytes: h2 does not decode them).
_VALID_NAME_BYTES = re.compile(rb"[a-z0-9!#$%&'*+.^_`|~-]+\Z").match
_BAD_CHAR_BYTES = re.compile(rb"[\x00\r\n]").search
_BLANKS_BYTES = (b" ", b"\t")
_FORBIDDEN_NAMES_BYTES = frozenset(name.encode() for name in _FORBIDDEN_NAMES - {"host"})
_VALID_STATUS = re.compile(rb"[1-9][0-9][0-9]\Z").match


# Headers already found valid: most of a push's headers (topic, push type,
# priority, the JWT) repeat from one request to the next.  Bounded; only
# hashable (str, str) pairs get here, as the connection's API requires.
_checked_headers: set[Header] = set()
_CHECKED_HEADERS_MAX = 1024


def check_headers(path: str, headers: list[Header]) -> None:
    """Raise InvalidRequest for a header the server would treat as a protocol error."""
    if not path or _bad_value(path):
        raise InvalidRequest(f"invalid :path {path!r}")
    checked = _checked_headers
    for header in headers:
        if header in checked:
            continue
        name, value = header
        if not _VALID_NAME(name) or name in _FORBIDDEN_NAMES:
            raise InvalidRequest(f"invalid header name {name!r} (lower-case, not connection-specific)")
        if _bad_value(value):
            raise InvalidRequest(f"invalid value for header {name!r}")
        if len(checked) >= _CHECKED_HEADERS_MAX:
            checked.clear()
        checked.add(header)


def decode_response_headers(headers: list[tuple[bytes, bytes]], *, trailers: bool = False) -> list[Header]:
    """Check a received response (or trailer) header block and decode it to str.

    The RFC 9113 section 8.2-8.3 rules h2 would check for a response: valid
    lower-case names, no NUL/CR/LF or edge blanks in values, no
    connection-specific fields, exactly one valid ``:status`` before the
    regular fields (none in trailers) and no other pseudo-header.

    Raises:
        h2.exceptions.ProtocolError: the block is malformed.
    """
    decoded: list[Header] = []
    append = decoded.append
    for index, (name, value) in enumerate(headers):
        if name[:1] == b":":
            if name != b":status" or index or trailers or not _VALID_STATUS(value):
                raise h2.exceptions.ProtocolError(f"invalid pseudo-header {name!r} in a response")
        elif not _VALID_NAME_BYTES(name) or name in _FORBIDDEN_NAMES_BYTES and not (
            name == b"te" and value == b"trailers"
        ):
            raise h2.exceptions.ProtocolError(f"invalid response header name {name!r}")
        if _BAD_CHAR_BYTES(value) or value[:1] in _BLANKS_BYTES or value[-1:] in _BLANKS_BYTES:
            raise h2.exceptions.ProtocolError(f"invalid value for response header {name!r}")
        try:
            append((name.decode("ascii"), value.decode("utf-8")))
        except UnicodeDecodeError as exc:
            raise h2.exceptions.ProtocolError(f"response header {name!r} is not UTF-8") from exc
    if not trailers and (not decoded or decoded[0][0] != ":status"):
        raise h2.exceptions.ProtocolError("response without :status")
    return decoded


def _bad_value(value: str) -> bool:
    return bool(_BAD_CHAR(value)) or value[:1] in _BLANKS or value[-1:] in _BLANKS


class _PlainEncoder(hpack.Encoder):
    """HPACK without Huffman coding of literals: per request it saves ~20 µs of
    CPU (of ~50 for the whole header block) for ~20 more bytes (the token in
    :path), a good trade on a few persistent connections."""

    def encode(self, headers: Any, huffman: bool = False) -> bytes:  # huffman: never (see above)
        return super().encode(headers, huffman=False)


class RustHpackEncoder:
    """jh2's Rust HPACK encoder with the interface h2 uses of ``hpack.Encoder``.

    Per request it costs about a tenth of the pure-Python encoder (9 µs
    instead of ~80 for an APNs header block, measured here).  Literals are
    not Huffman-coded, as with :class:`_PlainEncoder`; names and values
    are never marked never-indexed (see H2_CONFIG).
    """

    def __init__(self) -> None:
        self._encoder = _RustEncoder()

    @property
    def header_table_size(self) -> int:
        size: int = self._encoder.header_table_size
        return size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._encoder.header_table_size = value

    def encode(self, headers: Any, huffman: bool = False) -> bytes:  # huffman: never (see above)
        block: bytes = self._encoder.encode(
            [(name if name.__class__ is bytes else name.encode(),
              value if value.__class__ is bytes else value.encode(),
              isinstance(header, hpack.NeverIndexedHeaderTuple))
             for header in headers for name, value in (header,)],
            huffman=False,
        )
        return block


class RustHpackDecoder:
    """jh2's Rust HPACK decoder with the interface h2 uses of ``hpack.Decoder``
    (about 4 µs per response instead of ~65); its errors become hpack's, which
    h2 turns into a connection error as before."""

    def __init__(self) -> None:
        self._decoder = _RustDecoder()

    @property
    def header_table_size(self) -> int:
        size: int = self._decoder.header_table_size
        return size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._decoder.header_table_size = value

    @property
    def max_allowed_table_size(self) -> int:
        size: int = self._decoder.max_allowed_table_size
        return size

    @max_allowed_table_size.setter
    def max_allowed_table_size(self, value: int) -> None:
        self._decoder.max_allowed_table_size = value

    @property
    def max_header_list_size(self) -> int:
        size: int = self._decoder.max_header_list_size
        return size

    @max_header_list_size.setter
    def max_header_list_size(self, value: int) -> None:
        self._decoder.max_header_list_size = value

    def decode(self, data: bytes, raw: bool = False) -> list[tuple[Any, Any]]:
        try:
            decoded = self._decoder.decode(data, raw=raw)
        except _RustOversizedHeaderList as exc:
            raise hpack.OversizedHeaderListError(str(exc)) from None
        except _RustHPACKError as exc:
            raise hpack.HPACKDecodingError(str(exc)) from None
        except BaseException as exc:  # the codec panics on some invalid blocks
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise hpack.HPACKDecodingError(f"invalid header block: {exc}") from None
        return [hpack.NeverIndexedHeaderTuple(name, value) if sensitive else (name, value)
                for name, value, sensitive in decoded]


def hpack_codec() -> tuple[Any, Any]:
    """The (encoder, decoder) for a new connection: jh2's Rust codec, or the
    pure-Python one when jh2 is missing or hpack's own debug log is wanted
    (``debug_hpack``: it logs from the Python codec)."""
    if _RustEncoder is None or logging.getLogger("hpack").isEnabledFor(logging.DEBUG):
        return _PlainEncoder(), hpack.Decoder()
    return RustHpackEncoder(), RustHpackDecoder()


class ClientH2Connection(h2.connection.H2Connection):
    """h2's connection with a cheap open-stream count for new outbound streams.

    h2 counts open streams by walking every stream each time one is opened
    (pruning closed ones as it goes); with hundreds in flight that walk is
    the largest CPU cost of a request.  Our StreamLimiter already keeps us
    within the server's MAX_CONCURRENT_STREAMS, so the count comes from our
    own table and h2's walk (which also frees closed streams) runs only on
    every ``_PRUNE_EVERY``-th new stream.
    """

    def __init__(self, count_open: Callable[[], int]):
        super().__init__(config=H2_CONFIG)
        decoder = self.decoder
        self.encoder, self.decoder = hpack_codec()
        # What h2's __init__ set on the decoder it made.
        self.decoder.max_header_list_size = decoder.max_header_list_size
        self.decoder.max_allowed_table_size = decoder.max_allowed_table_size
        self._count_open = count_open
        self._until_prune = _PRUNE_EVERY

    def _receive_goaway_frame(self, frame):  # type: ignore[no-untyped-def]
        """Let answers to streams at or below ``last_stream_id`` in after GOAWAY.

        h2 moves its state machine to CLOSED on a received GOAWAY and then
        refuses every later frame with ProtocolError, also the HEADERS and
        DATA the server still sends for the streams it promised to process
        (RFC 9113 section 6.8).  Going back to CLIENT_OPEN here, inside
        ``receive_data``, also covers answers that arrive in the same read
        as the GOAWAY.  :class:`Http2Connection` opens no stream afterwards.
        """
        was_open = self.state_machine.state is h2.connection.ConnectionState.CLIENT_OPEN
        frames, events = super()._receive_goaway_frame(frame)
        if was_open:
            self.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        return frames, events

    @property
    def open_outbound_streams(self) -> int:
        self._until_prune -= 1
        if self._until_prune <= 0:
            self._until_prune = _PRUNE_EVERY
            return super().open_outbound_streams
        return self._count_open()
