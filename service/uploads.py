"""Streamed ``multipart/form-data`` parsing with limits checked as the bytes arrive.

Starlette's form parser reads a whole body before a handler sees it; an upload limit is
only worth something if the refusal comes first. Here the body is fed chunk by chunk to
python-multipart, the image part goes to a spooled temporary file, and the request is
refused (413) the moment the image passes ``max_image_bytes`` or the declared
``Content-Length`` is over what the limits allow, without reading the rest.

A form is used only whole: python-multipart's ``finalize`` does not check that the closing
boundary came, so a body cut short would silently lose its last part (a ``scale`` sent last,
half an image). The parser's end callback is the proof of a whole form; without it the
request is a 400. After the closing boundary at most :data:`MAX_EPILOGUE_BYTES` more are
read (RFC 2046 lets an epilogue follow; nobody needs a long one).
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from megasr.errors import ImageTooLargeError, InvalidParameterError, MalformedRequestError

IMAGE_FIELD = "image"
MAX_FIELDS = 32
MAX_FIELD_BYTES = 16 * 1024
SPOOL_IN_MEMORY_BYTES = 1024 * 1024
# Room for the text fields and part headers on top of the image itself.
FORM_OVERHEAD_BYTES = MAX_FIELDS * MAX_FIELD_BYTES + 64 * 1024
# Bytes after the closing boundary (an epilogue) read before the body is refused.
MAX_EPILOGUE_BYTES = 1024
# RFC 2046 section 5.1.1: 1 to 70 of these characters, the last one not a space.
MAX_BOUNDARY_LENGTH = 70
BOUNDARY_CHARACTERS = frozenset(
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
)


@dataclass
class Upload:
    """A parsed form: the image bytes and the other fields as text."""

    image: bytes
    filename: str | None
    fields: dict[str, str] = field(default_factory=dict)


def check_declared_length(content_length: str | None, max_image_bytes: int) -> int | None:
    """The declared body length (None: chunked); refuses one that cannot fit the limits,
    before reading any of the body."""
    if content_length is None:
        return None
    try:
        length = int(content_length)
    except ValueError:
        raise InvalidParameterError("Content-Length is not a number") from None
    if length > max_image_bytes + FORM_OVERHEAD_BYTES:
        raise ImageTooLargeError(
            f"request body of {length} bytes is over the upload limit of {max_image_bytes} bytes"
        )
    return length


async def read_upload(
    content_type: str | None, chunks: AsyncIterator[bytes], max_image_bytes: int
) -> Upload:
    """Parse the form in ``chunks``; raises 413 past ``max_image_bytes``, 422 on a bad field,
    400 on a body that is not a whole multipart form."""
    boundary = form_boundary(content_type)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES) as spool:
        form = _FormCollector(max_image_bytes, spool)
        close = _ClosingDelimiter(boundary)
        try:
            parser = MultipartParser(boundary, form.callbacks())
            async for chunk in chunks:
                if form.ended:
                    form.count_epilogue(len(chunk))
                    continue
                parser.write(chunk)  # the callbacks raise as soon as a limit is passed
                if form.ended:
                    form.count_epilogue(close.bytes_after(chunk))
                close.remember(chunk)
        except FormParserError as exc:
            raise MalformedRequestError(f"malformed multipart body: {exc}") from exc
        if not form.ended:
            raise MalformedRequestError(
                "the multipart body ended before its closing boundary "
                f"(--{boundary.decode('ascii')}--); nothing of it was used"
            )
        return form.result()


def form_boundary(content_type: str | None) -> bytes:
    """The multipart boundary of ``content_type``; 422 for another media type, 400 for a
    boundary RFC 2046 does not allow."""
    mime, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if mime != b"multipart/form-data" or boundary is None:
        raise InvalidParameterError("send multipart/form-data with the image in a part 'image'")
    if not 1 <= len(boundary) <= MAX_BOUNDARY_LENGTH:
        raise MalformedRequestError(
            f"the multipart boundary is {len(boundary)} characters long; "
            f"RFC 2046 allows 1 to {MAX_BOUNDARY_LENGTH}"
        )
    if not set(boundary) <= BOUNDARY_CHARACTERS or boundary.endswith(b" "):
        raise MalformedRequestError(
            "the multipart boundary has characters RFC 2046 does not allow "
            "(letters, digits, '()+_,-./:=? and inner spaces only)"
        )
    return boundary


class _ClosingDelimiter:
    """Finds how much of the chunk that ended the form comes after its closing delimiter.

    The first ``CRLF--boundary--`` of a body is its close (part data cannot hold one: it
    would have ended the part), so no more than the last chunk's tail needs keeping."""

    def __init__(self, boundary: bytes) -> None:
        self.marker = b"\r\n--" + boundary + b"--"
        self.tail = b"\r\n"  # a body may open with its close (a form with no parts)

    def remember(self, chunk: bytes) -> None:
        self.tail = (self.tail + chunk)[-len(self.marker) :]

    def bytes_after(self, chunk: bytes) -> int:
        data = self.tail + chunk
        return len(data) - (data.find(self.marker) + len(self.marker))


class _FormCollector:
    """Callbacks for python-multipart that collect one form under the limits."""

    def __init__(self, max_image_bytes: int, spool: IO[bytes]) -> None:
        self.max_image_bytes = max_image_bytes
        self.fields: dict[str, str] = {}
        self.spool = spool
        self.image_bytes = 0
        self.image_seen = False
        self.filename: str | None = None
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._value = bytearray()
        self.ended = False  # the closing boundary was parsed
        self._epilogue_bytes = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def count_epilogue(self, size: int) -> None:
        self._epilogue_bytes += size
        if self._epilogue_bytes > MAX_EPILOGUE_BYTES:
            raise MalformedRequestError(
                f"the body goes on for more than {MAX_EPILOGUE_BYTES} bytes after its "
                "closing boundary"
            )

    def result(self) -> Upload:
        if not self.image_seen:
            raise InvalidParameterError("the form has no file part named 'image'")
        self.spool.seek(0)
        return Upload(image=self.spool.read(), filename=self.filename, fields=self.fields)

    def _end(self) -> None:
        self.ended = True

    def _part_begin(self) -> None:
        self._headers = {}
        self._name = None
        self._value = bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = b""
        self._header_value = b""

    def _headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name")
        if disposition != b"form-data" or name is None:
            raise MalformedRequestError("a form part has no Content-Disposition: form-data name")
        self._name = name.decode("utf-8", "replace")
        if self._name == IMAGE_FIELD:
            if self.image_seen:
                raise InvalidParameterError("more than one 'image' part")
            self.image_seen = True
            filename = options.get(b"filename")
            self.filename = filename.decode("utf-8", "replace") if filename else None
        elif self._name in self.fields:
            raise InvalidParameterError(f"field {self._name!r} given more than once")
        elif len(self.fields) >= MAX_FIELDS:
            raise InvalidParameterError(f"more than {MAX_FIELDS} form fields")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name == IMAGE_FIELD:
            self.image_bytes += end - start
            if self.image_bytes > self.max_image_bytes:
                raise ImageTooLargeError(
                    f"image is over the upload limit of {self.max_image_bytes} bytes"
                )
            self.spool.write(data[start:end])
            return
        self._value += data[start:end]
        if len(self._value) > MAX_FIELD_BYTES:
            raise InvalidParameterError(f"field {self._name!r} is over {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._name is not None and self._name != IMAGE_FIELD:
            try:
                self.fields[self._name] = self._value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidParameterError(f"field {self._name!r} is not UTF-8 text") from exc
