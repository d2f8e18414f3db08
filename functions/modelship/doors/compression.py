"""Content codings in transit (RFC 9110, 8.4 and 12.5.3), the same through every door.

Responses: a body over ``MIN_COMPRESSED_BYTES`` is sent gzip-compressed (or deflate, if that is all the
client takes) when the request's ``Accept-Encoding`` accepts it, and carries ``Vary: Accept-Encoding``.
A body that would not shrink is sent as it is. The binary extension's ``Inference-Header-Content-Length``
always counts the JSON header of the uncompressed body, as Triton's server and clients read it.

Requests: a ``Content-Encoding`` of gzip (``x-gzip``) or deflate is inflated incrementally, never past
the request-size cap: the output is bounded by the cap plus one byte however small the compressed body,
so a bomb costs at most twice the cap in memory (the pieces, then their join). Any other coding is a 415,
a body that does not inflate a 400. API Gateway REST inflates request bodies itself before a Lambda proxy
integration but passes the ``Content-Encoding`` header on: a body under that header that does not begin
with the coding's own header is taken as already decoded, so the request gets the same answer through
every door.
"""

from __future__ import annotations

import re
import zlib
from typing import Final

from modelship.core.errors import BadRequest, ModelshipError, PayloadTooLarge

# Bodies up to this size go out as they are: below about a kilobyte, gzip's 18 bytes of framing and the
# time to compress buy next to nothing (one TCP segment either way). API Gateway's minCompressionSize
# (infra/constructs/inference_api.py) is the same figure.
MIN_COMPRESSED_BYTES: Final = 1024
# zlib level 1: about 5x faster than the default 6 on tensors, within 10 % of its size (docs/benchmarks.md).
COMPRESSION_LEVEL: Final = 1
GZIP: Final = "gzip"
DEFLATE: Final = "deflate"
VARY_HEADER: Final = {"Vary": "Accept-Encoding"}

_GZIP_MAGIC: Final = b"\x1f\x8b"
_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
_ZLIB_WBITS: Final = zlib.MAX_WBITS
_CODING_ALIASES: Final = {"gzip": GZIP, "x-gzip": GZIP, "deflate": DEFLATE}
# Parsed Accept-Encoding values: clients send a handful of distinct ones, so a small table saves the parse.
_MAX_CACHED_ACCEPTS: Final = 256
# qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )  (RFC 9110, 12.4.2)
_QVALUE: Final = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
# A gzip body may hold several members (concatenated files); clients send one. Bounded, since each member
# costs a new inflater: thousands of empty members in a few megabytes would be CPU for nothing.
MAX_GZIP_MEMBERS: Final = 64
# How much compressed input zlib is handed at once (see _inflate).
_INFLATE_CHUNK_BYTES: Final = 64 * 1024
_accepted: dict[str, str | None] = {}


class UnsupportedContentEncoding(ModelshipError):
    status = 415


def response_coding(accept_encoding: str) -> str | None:
    """The coding to answer in for this ``Accept-Encoding`` value: ``"gzip"``, ``"deflate"`` or None.

    Codings are case-insensitive, ``x-gzip`` is gzip, ``*`` stands for any coding not named, and a coding
    with ``q=0`` (or a malformed q-value) is not acceptable. gzip wins a tie."""
    if accept_encoding in _accepted:
        return _accepted[accept_encoding]
    chosen = _parse_accept_encoding(accept_encoding)
    if len(_accepted) < _MAX_CACHED_ACCEPTS:
        _accepted[accept_encoding] = chosen
    return chosen


def _parse_accept_encoding(accept_encoding: str) -> str | None:
    weights: dict[str, float] = {}
    wildcard: float | None = None
    for element in accept_encoding.split(","):
        coding, _, parameters = element.partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        weight = _qvalue(parameters)
        if coding == "*":
            wildcard = weight
        elif coding in _CODING_ALIASES:
            name = _CODING_ALIASES[coding]
            # gzip and x-gzip are one coding: the more favourable mention counts.
            weights[name] = max(weight, weights.get(name, 0.0))
    gzip_weight = weights.get(GZIP, wildcard or 0.0)
    deflate_weight = weights.get(DEFLATE, wildcard or 0.0)
    if gzip_weight > 0 and gzip_weight >= deflate_weight:
        return GZIP
    if deflate_weight > 0:
        return DEFLATE
    return None


def _qvalue(parameters: str) -> float:
    """The q parameter's weight (1 when absent); 0 when it is not a valid qvalue (RFC 9110, 12.4.2)."""
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() != "q":
            continue
        value = value.strip()
        # float() alone would also take "0.1_1" or "1.0e0".
        return float(value) if _QVALUE.fullmatch(value) else 0.0
    return 1.0


def compress(body: bytes, coding: str) -> bytes:
    compressor = zlib.compressobj(
        COMPRESSION_LEVEL, zlib.DEFLATED, _GZIP_WBITS if coding == GZIP else _ZLIB_WBITS
    )
    return compressor.compress(body) + compressor.flush()


def encode_body(body: bytes, accept_encoding: str | None) -> tuple[bytes, str | None]:
    """The body to send and its ``Content-Encoding`` (None: as it is). Callers add ``VARY_HEADER`` to
    every response longer than ``MIN_COMPRESSED_BYTES``, compressed or not."""
    if accept_encoding is None or len(body) <= MIN_COMPRESSED_BYTES:
        return body, None
    coding = response_coding(accept_encoding)
    if coding is None:
        return body, None
    compressed = compress(body, coding)
    if len(compressed) >= len(body):
        return body, None
    return compressed, coding


def decode_body(body: bytes, content_encoding: str, limit: int) -> bytes:
    """The request body without its content coding, at most ``limit`` bytes once inflated.

    Raises ``UnsupportedContentEncoding`` (415) for a coding other than gzip, deflate or identity (or
    more than one), ``PayloadTooLarge`` (413) as soon as the output passes ``limit``, and ``BadRequest``
    for a body that does not inflate."""
    codings = [coding for coding in (part.strip().lower() for part in content_encoding.split(",")) if coding]
    codings = [coding for coding in codings if coding != "identity"]
    if not codings:
        return body
    if len(codings) > 1:
        raise UnsupportedContentEncoding(
            "one content coding at most: Content-Encoding may be gzip or deflate, not several"
        )
    coding = _CODING_ALIASES.get(codings[0])
    if coding is None:
        raise UnsupportedContentEncoding(
            f"Content-Encoding {codings[0][:40]!r} is not supported: send gzip, deflate or identity"
        )
    if not body:
        return body
    if coding == GZIP:
        if body[:2] != _GZIP_MAGIC:
            return body  # already inflated upstream (API Gateway)
        return _inflate(body, _GZIP_WBITS, limit, coding)
    if not _looks_like_zlib(body):
        return body
    return _inflate(body, _ZLIB_WBITS, limit, coding)


def _looks_like_zlib(body: bytes) -> bool:
    """A zlib stream's two-byte header (RFC 1950): method 8, and a multiple of 31. JSON never starts so."""
    return len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0


def _inflate(body: bytes, wbits: int, limit: int, coding: str) -> bytes:
    """Inflate ``body`` fed in chunks of ``_INFLATE_CHUNK_BYTES``: what zlib hands back unread (the
    rest of a chunk after a member ends) is never more than one chunk, so many members cost linear
    time, not a copy of the whole remaining body per member."""
    pieces: list[bytes] = []
    size = 0
    view = memoryview(body)
    offset = 0
    members = 1
    inflater = zlib.decompressobj(wbits)
    data: bytes | memoryview = b""
    try:
        while True:
            if not data:
                if offset >= len(body):
                    raise BadRequest(f"request body is a truncated {coding} stream")
                data = view[offset : offset + _INFLATE_CHUNK_BYTES]
                offset += len(data)
            # Never more than one byte past the cap, whatever the ratio of the compressed input.
            piece = inflater.decompress(data, limit + 1 - size)
            size += len(piece)
            if size > limit:
                raise PayloadTooLarge(
                    f"request body inflates to more than the {limit}-byte limit ({coding}, "
                    f"{len(body)} bytes compressed)"
                )
            pieces.append(piece)
            if not inflater.eof:
                data = inflater.unconsumed_tail
                continue
            rest = inflater.unused_data
            if len(rest) < len(_GZIP_MAGIC) and offset < len(body):
                # The next member's magic may straddle two chunks.
                more = bytes(view[offset : offset + len(_GZIP_MAGIC) - len(rest)])
                offset += len(more)
                rest += more
            if not rest:
                break
            if coding == GZIP and rest[:2] == _GZIP_MAGIC:
                # A gzip file may hold several members, one after another (RFC 1952, 2.2).
                members += 1
                if members > MAX_GZIP_MEMBERS:
                    raise BadRequest(f"request body has more than {MAX_GZIP_MEMBERS} gzip members")
                inflater = zlib.decompressobj(wbits)
                data = rest
                continue
            raise BadRequest(
                f"request body has {len(rest) + len(body) - offset} bytes after its {coding} stream"
            )
    except zlib.error:
        raise BadRequest(f"request body is not valid {coding} data") from None
    return b"".join(pieces)
