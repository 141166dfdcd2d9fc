"""The streamed form parser refuses an oversized image before the body is read whole."""

from __future__ import annotations

import asyncio

import pytest

from megasr.errors import ImageTooLargeError, InvalidParameterError, MalformedRequestError
from megasr.service.uploads import (
    FORM_OVERHEAD_BYTES,
    MAX_EPILOGUE_BYTES,
    check_declared_length,
    read_upload,
)

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


def unclosed(name: str, value: bytes, filename: str | None = None) -> bytes:
    """A last part whose closing boundary never comes."""
    return part(name, value, filename)[:-2]


@pytest.mark.parametrize(
    "body",
    [
        # Before: the unclosed scale was dropped and the job ran at scale 4.
        part("image", b"\x89PNG...", "a.png") + unclosed("scale", b"2"),
        # Before: half a BMP in an unclosed image part was accepted.
        part("scale", b"2") + unclosed("image", b"BM" + b"\0" * 40, "half.bmp"),
        part("image", b"\x89PNG...", "a.png"),  # every part closed, but no closing boundary
        part("image", b"\x89PNG...", "a.png") + f"--{BOUNDARY}".encode(),
        b"",
    ],
)
def test_a_body_that_ends_before_its_closing_boundary_is_refused_whole(body):
    with pytest.raises(MalformedRequestError, match="ended before its closing boundary"):
        parse([body[:5], body[5:]] if body else [])


@pytest.mark.parametrize(
    ("boundary", "message"),
    [
        ("b" * 257, "257 characters long"),  # python-multipart's constructor raised a 500
        ("b" * 71, "71 characters long"),
        ('"a\u00e9b"', "characters RFC 2046 does not allow"),
        ('"trailing "', "characters RFC 2046 does not allow"),
        ('""', "0 characters long"),
    ],
)
def test_a_boundary_rfc_2046_does_not_allow_is_400(boundary, message):
    async def body():
        yield END

    content_type = f"multipart/form-data; boundary={boundary}"
    with pytest.raises(MalformedRequestError, match=message):
        asyncio.run(read_upload(content_type, body(), 1000))


def test_a_boundary_of_70_characters_with_inner_spaces_is_fine():
    boundary = "'()+_,-./:=? " + "b" * 57
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\n'

    async def body():
        yield head.encode() + b"img\r\n" + f"--{boundary}--".encode()

    upload = asyncio.run(read_upload(f'multipart/form-data; boundary="{boundary}"', body(), 99))
    assert upload.image == b"img"


def test_a_parse_error_names_what_was_wrong():
    with pytest.raises(MalformedRequestError, match=r"malformed multipart body: .*boundary"):
        parse([b"not a delimiter\r\n" + part("image", b"x", "a") + END])


def test_a_small_epilogue_is_fine_and_a_long_one_is_not_read():
    form = part("image", b"\x89PNG...", "a.png") + END
    upload, _ = parse([form + b"\r\nan epilogue RFC 2046 allows"])
    assert upload.image == b"\x89PNG..."

    chunks = [form[:-9], form[-9:] + b"e" * 100] + [b"e" * 100] * 100_000  # 10 MB after it
    body = CountingBody(chunks)
    with pytest.raises(MalformedRequestError, match="after its closing boundary"):
        asyncio.run(read_upload(CONTENT_TYPE, body.__aiter__(), 1000))
    assert body.pulled <= 2 + MAX_EPILOGUE_BYTES // 100 + 1


def test_the_epilogue_is_counted_from_the_closing_boundary_in_one_chunk():
    form = part("image", b"\x89PNG...", "a.png") + END
    with pytest.raises(MalformedRequestError, match="after its closing boundary"):
        parse([form + b"e" * (MAX_EPILOGUE_BYTES + 1)])
    upload, _ = parse([form + b"e" * (MAX_EPILOGUE_BYTES - len("\r\n"))])
    assert upload.filename == "a.png"


def test_a_body_cut_anywhere_before_its_close_is_never_used():
    """Every prefix of a form that stops short of its closing boundary is refused, each
    with a 4xx; none gives an upload back."""
    body = part("scale", b"2") + part("image", b"\x89PNG-bytes", "a.png") + END
    close_end = body.index(END) + len(END) - len("\r\n")
    for cut in range(close_end):
        with pytest.raises((MalformedRequestError, InvalidParameterError)) as refused:
            parse([body[:cut]])
        assert 400 <= refused.value.status < 500, cut
    upload, _ = parse([body[:close_end]])  # from the closing delimiter on: whole
    assert upload.fields == {"scale": "2"}
