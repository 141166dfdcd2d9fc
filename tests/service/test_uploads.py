"""The streamed form parser refuses an oversized image before the body is read whole."""

from __future__ import annotations

import asyncio

import pytest

from megasr.errors import ImageTooLargeError, InvalidParameterError
from megasr.service.uploads import FORM_OVERHEAD_BYTES, check_declared_length, read_upload

BOUNDARY = "XyZ"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
END = f"--{BOUNDARY}--\r\n".encode()


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"


class CountingBody:
    """An async body that counts how many chunks the parser pulled."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.pulled = 0

    async def __aiter__(self):
        for chunk in self.chunks:
            self.pulled += 1
            yield chunk


def parse(chunks: list[bytes], max_image_bytes: int = 1000):
    body = CountingBody(chunks)
    result = asyncio.run(read_upload(CONTENT_TYPE, body.__aiter__(), max_image_bytes))
    return result, body


def test_a_form_is_parsed_into_image_and_fields():
    body = part("scale", b"2") + part("image", b"\x89PNG...", "a.png") + END
    upload, _ = parse([body[:7], body[7:40], body[40:]])
    assert upload.image == b"\x89PNG..."
    assert upload.filename == "a.png"
    assert upload.fields == {"scale": "2"}


def test_an_oversized_image_is_refused_before_the_rest_is_read():
    head = part("image", b"", "big.png")[:-2]  # headers, then the data streams in
    chunks = [head] + [b"x" * 100] * 1000 + [f"\r\n--{BOUNDARY}--\r\n".encode()]
    body = CountingBody(chunks)

    with pytest.raises(ImageTooLargeError):
        asyncio.run(read_upload(CONTENT_TYPE, body.__aiter__(), max_image_bytes=1000))

    assert body.pulled < 20  # refused at ~1000 bytes, not after 100 kB


def test_a_declared_length_over_the_limit_is_refused_unread():
    with pytest.raises(ImageTooLargeError):
        check_declared_length(str(1000 + FORM_OVERHEAD_BYTES + 1), 1000)
    check_declared_length(str(1000), 1000)
    check_declared_length(None, 1000)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (part("scale", b"2") + END, "no file part"),
        (part("scale", b"2") + part("scale", b"3"), "more than once"),
        (part("prompt", b"p" * 20_000), "over"),
        (part("image", b"a", "a") + part("image", b"b", "b"), "more than one"),
    ],
)
def test_bad_forms_are_422(body, message):
    with pytest.raises(InvalidParameterError, match=message):
        parse([body])


def test_a_body_that_is_not_multipart_is_422():
    async def empty():
        yield b"{}"

    with pytest.raises(InvalidParameterError, match="multipart"):
        asyncio.run(read_upload("application/json", empty(), 1000))
