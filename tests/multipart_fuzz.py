"""A mutation fuzzer for the gateway's upload route, over raw sockets to a real gateway process.

Each case starts from a valid ``POST /v1/upscale`` (a small PNG, a ``scale`` and an
``output_format`` field) and applies mutations drawn by hypothesis: the boundary (length,
characters, the header's and the body's differing), the parts (dropped, duplicated,
reordered, unclosed, without a name, huge or non-UTF-8 names, folded or RFC 2231 headers,
many headers), the end (no closing boundary, a preamble, an epilogue), a cut at one of the
body's structural points or anywhere, random byte flips, inserts and deletes, the HTTP
framing (Content-Length exact, short or long, chunked, both, twice, neither, unknown
transfer codings) and the request's own headers (a folded or missing Content-Type, other
media types, non-ASCII bytes, ``Expect: 100-continue``).

Every answer is checked:

- one comes, before the gateway's upload deadline plus a margin (else a *hang*);
- never a 5xx;
- every refusal is ``application/problem+json`` with its status in the body, except the
  plain-text 400 the HTTP server itself (uvicorn's h11) sends for a request it cannot frame,
  before the app sees it: those are counted apart (:data:`SERVER_REFUSAL`);
- a body cut before its closing boundary is never accepted;
- an accepted job used whole parts only: the stored input, and a ``scale`` other than the
  default, each stand in the sent body followed by a delimiter of the body's boundary, so no
  part that did not end was used.

``tests/service/test_multipart_fuzz.py`` runs a few hundred cases; ``bench/edge_fuzz.py``
runs tens of thousands and writes the counts to docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import socket
import string
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h11
import numpy as np
from hypothesis import strategies as st
from loopback import LOOPBACK, ChildServer, free_port, gateway_command, service_env
from PIL import Image

# The gateway under fuzz: short deadlines, so a case that leaves its body unfinished costs
# well under a second, and caps far above the fuzzer's own concurrency, so no refusal is a
# 503 for being busy.
UPLOAD_TIMEOUT_S = 2.0
UPLOAD_IDLE_TIMEOUT_S = 0.4
MAX_UPLOAD_BYTES = 200_000
# An answer must come within the upload deadline plus this (the refusal's drain included).
ANSWER_MARGIN_S = 3.0
SERVER_REFUSAL = b"Invalid HTTP request received."
DEFAULT_SCALE = 4.0
BOUNDARY_CHARS = string.ascii_letters + string.digits + "'()+_,-./:=?"
CASES_PER_BATCH = 8
_CHUNKED = [("Transfer-Encoding", "chunked")]


def fuzz_env(redis_url: str, data_dir: Path, queue: str) -> dict[str, str]:
    """A gateway child on one Redis with local storage, auth and tenant limits off."""
    return {
        **service_env(dict(os.environ), redis_url, data_dir, queue),
        "MEGASR_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "MEGASR_MAX_CONCURRENT_UPLOADS": "64",
        "MEGASR_UPLOAD_TIMEOUT_S": str(UPLOAD_TIMEOUT_S),
        "MEGASR_UPLOAD_IDLE_TIMEOUT_S": str(UPLOAD_IDLE_TIMEOUT_S),
    }


@contextmanager
def fuzz_gateway(redis_url: str, root: Path, queue: str = "fuzz") -> Iterator[ChildServer]:
    """The real gateway (uvicorn, its production app factory) in a child process."""
    port = free_port()
    env = fuzz_env(redis_url, root / "data", queue)
    with ChildServer(gateway_command(port), env, port, root / "gateway.log") as server:
        server.wait_ready()
        yield server


def small_png(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


# -- cases ---------------------------------------------------------------------------------


@dataclass
class Part:
    name: bytes
    value: bytes
    filename: bytes | None = None
    headers: list[bytes] = field(default_factory=list)  # raw extra header lines
    disposition: bytes | None = None  # a raw Content-Disposition line instead of the usual

    def encode(self) -> bytes:
        if self.disposition is not None:
            lines = [self.disposition]
        else:
            line = b'Content-Disposition: form-data; name="' + self.name + b'"'
            if self.filename is not None:
                line += b'; filename="' + self.filename + b'"'
            lines = [line]
        return b"\r\n".join([*lines, *self.headers]) + b"\r\n\r\n" + self.value


@dataclass
class Case:
    """One request, and what was done to it (``tags``)."""

    boundary: bytes  # the body's
    content_type: bytes | None
    body: bytes
    framing: str
    extra_headers: list[tuple[bytes, bytes]]
    tags: list[str]
    cut_before_close: bool  # the body stops before its closing boundary ends

    def request(self) -> bytes:
        head = [b"POST /v1/upscale HTTP/1.1", b"Host: 127.0.0.1"]
        if self.content_type is not None:
            head.append(b"Content-Type: " + self.content_type)
        body = self.body
        declared = len(body)
        if self.framing == "short":  # declares more than it sends: the deadline must cut it
            declared += 17
        elif self.framing == "long":  # sends more than it declares
            declared = max(0, declared - 9)
        if self.framing in ("length", "short", "long", "both", "twice"):
            head.append(b"Content-Length: %d" % declared)
        if self.framing == "twice":
            head.append(b"Content-Length: %d" % (declared + 1))
        if self.framing in ("chunked", "both", "gzip-chunked"):
            coding = b"gzip, chunked" if self.framing == "gzip-chunked" else b"chunked"
            head.append(b"Transfer-Encoding: " + coding)
            body = chunked(body)
        head += [name + b": " + value for name, value in self.extra_headers]
        return b"\r\n".join(head) + b"\r\n\r\n" + body


def chunked(body: bytes, size: int = 7919) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def boundaries() -> st.SearchStrategy[bytes]:
    valid = st.text(BOUNDARY_CHARS, min_size=1, max_size=70)
    long = st.integers(71, 600).map(lambda n: "b" * n)
    odd = st.text(
        st.characters(codec="latin-1", exclude_characters="\r\n\x00"), min_size=0, max_size=80
    )
    return st.one_of(valid, valid, valid, long, odd).map(lambda s: s.encode("latin-1"))


def part_edits(image: bytes) -> st.SearchStrategy[Callable[[list[Part]], list[str]]]:
    """Each draw: a function that edits the parts in place and returns its tags."""

    def drop(i: int):
        def edit(parts: list[Part]) -> list[str]:
            if parts:
                parts.pop(i % len(parts))
            return ["drop-part"]

        return edit

    def duplicate(i: int):
        def edit(parts: list[Part]) -> list[str]:
            if parts:
                parts.insert(i % len(parts), parts[i % len(parts)])
            return ["duplicate-part"]

        return edit

    def reorder(i: int):
        def edit(parts: list[Part]) -> list[str]:
            if len(parts) > 1:
                parts.append(parts.pop(i % len(parts)))
            return ["reorder"]

        return edit

    def rename(name: bytes, tag: str):
        def edit(parts: list[Part]) -> list[str]:
            if parts:
                parts[-1].name = name
            return [tag]

        return edit

    def header_line(line: bytes, tag: str):
        def edit(parts: list[Part]) -> list[str]:
            if parts:
                parts[0].headers.append(line)
            return [tag]

        return edit

    def disposition(line: bytes, tag: str):
        def edit(parts: list[Part]) -> list[str]:
            if parts:
                parts[0].disposition = line
            return [tag]

        return edit

    def add_field(name: bytes, value: bytes):
        def edit(parts: list[Part]) -> list[str]:
            parts.append(Part(name, value))
            return ["extra-field"]

        return edit

    index = st.integers(0, 5)
    name_bytes = st.binary(min_size=0, max_size=40).filter(lambda b: b'"' not in b)
    return st.one_of(
        index.map(drop),
        index.map(duplicate),
        index.map(reorder),
        st.integers(1000, 20_000).map(lambda n: rename(b"n" * n, "huge-name")),
        name_bytes.map(lambda b: rename(b, "binary-name")),
        st.sampled_from([b"\xff\xfe", "sk\u00e1la".encode("latin-1"), "m\u00fc".encode()]).map(
            lambda b: rename(b, "non-utf8-name")
        ),
        st.just(header_line(b"Content-Type: image/png;\r\n charset=x", "folded-part-header")),
        st.just(header_line(b" continued", "folded-part-header")),
        st.integers(1, 40).map(
            lambda n: header_line(b"\r\n".join(b"X-H%d: v" % i for i in range(n)), "many-headers")
        ),
        st.integers(4000, 20_000).map(lambda n: header_line(b"X-Big: " + b"v" * n, "huge-header")),
        st.just(disposition(b"Content-Type: image/png", "no-disposition")),
        st.just(disposition(b'Content-Disposition: attachment; name="image"', "not-form-data")),
        st.just(
            disposition(
                b"Content-Disposition: form-data; name=\"image\"; filename*=UTF-8''%E2%82%AC.png",
                "rfc2231-filename",
            )
        ),
        st.just(disposition(b"Content-Disposition: form-data; name=image", "unquoted-name")),
        st.just(disposition(b'Content-Disposition:form-data;name="image"', "no-spaces")),
        st.builds(add_field, st.sampled_from([b"width", b"quality", b"zzz", b"scale"]), name_bytes),
        st.just(add_field(b"image", image)),
    )


FAMILIES = (
    "boundary",
    "parts",
    "ending",
    "preamble",
    "epilogue",
    "cut",
    "bytes",
    "framing",
    "content-type",
    "request-header",
)


@st.composite
def cases(draw: st.DrawFn, image: bytes) -> Case:
    """A valid upload with up to three families of mutations ("valid" alone: none)."""
    drawn = st.lists(st.sampled_from(("valid", *FAMILIES)), min_size=1, max_size=3, unique=True)
    families = set(draw(drawn))
    tags: list[str] = ["unmutated"] if families == {"valid"} else []
    boundary = draw(boundaries()) if "boundary" in families else b"fuzz-b0undary"
    parts = [
        Part(b"image", image, b"photo.png", [b"Content-Type: image/png"]),
        Part(b"scale", draw(st.sampled_from([b"2", b"3", b"1.5"]))),
        Part(b"output_format", b"webp"),
    ]
    if "parts" in families:
        for edit in draw(st.lists(part_edits(image), min_size=1, max_size=3)):
            tags += edit(parts)
    delimiter = b"--" + boundary
    body = b"".join(delimiter + b"\r\n" + part.encode() + b"\r\n" for part in parts)
    close = delimiter + b"--"
    ending = "close"
    if "ending" in families:
        ending = draw(st.sampled_from(["none", "no-dashes", "padded", "no-crlf"]))
    body += {
        "close": close + b"\r\n",
        "none": b"",
        "no-dashes": delimiter + b"\r\n",
        "padded": close + b"  \r\n",
        "no-crlf": close,
    }[ending]
    tags.append(f"end-{ending}")
    closes = ending in ("close", "padded", "no-crlf") and bool(parts)
    close_end = body.rfind(close) + len(close) if closes else len(body) + 1
    if "preamble" in families:
        preamble = draw(st.sampled_from([b"preamble\r\n", b"\r\n", b" ", b"--\r\n"]))
        body, close_end = preamble + body, close_end + len(preamble)
        tags.append("preamble")
    if "epilogue" in families:
        body += draw(st.sampled_from([b"\r\n", b"epilogue", b"e" * 1000, b"e" * 100_000]))
        tags.append("epilogue")
    cut_before_close = not closes
    if "cut" in families:  # at a structural point or anywhere
        points = structural_points(body, delimiter)
        at = draw(st.one_of(st.sampled_from(points), st.integers(0, len(body))))
        body = body[:at]
        cut_before_close = cut_before_close or at < close_end
        tags.append("cut")
    if "bytes" in families:
        edits = draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1))
        for position, value in edits[:4]:
            body = mutate_byte(body, position, value)
        tags.append("bytes")
        cut_before_close = False  # no longer known: the oracle stops asserting it
    framing = "length"
    if "framing" in families:
        framing = draw(
            st.sampled_from(["chunked", "short", "long", "both", "twice", "none", "gzip-chunked"])
        )
    tags.append(f"framing-{framing}")
    content_type = b"multipart/form-data; boundary=" + _quoted(boundary)
    if "content-type" in families:
        header_boundary = draw(st.one_of(st.just(boundary), boundaries()))
        content_type = draw(content_types(header_boundary))
        tags.append("content-type")
    extra: list[tuple[bytes, bytes]] = []
    if "request-header" in families:
        extra = draw(
            st.sampled_from(
                [
                    [(b"Expect", b"100-continue")],
                    [(b"X-A", b"\xff\xfe")],
                    [(b"X-Folded", b"a\r\n b")],
                    [(b"X-" + b"h" * 9000, b"v")],
                    [(b"Content-Encoding", b"gzip")],
                ]
            )
        )
        tags.append("request-header")
    return Case(boundary, content_type, body, framing, extra, tags, cut_before_close)


def _quoted(boundary: bytes) -> bytes:
    if boundary and all(chr(c) in BOUNDARY_CHARS for c in boundary):
        return boundary
    return b'"' + boundary.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def content_types(boundary: bytes) -> st.SearchStrategy[bytes | None]:
    usual = b"multipart/form-data; boundary=" + _quoted(boundary)
    return st.sampled_from(
        [
            usual,
            b"multipart/form-data;\r\n boundary=" + _quoted(boundary),  # obs-fold
            b"MULTIPART/FORM-DATA; charset=utf-8; boundary=" + _quoted(boundary),
            b"multipart/form-data; boundary=" + _quoted(boundary) + b"; boundary=other",
            b"multipart/form-data",
            b"multipart/mixed; boundary=" + _quoted(boundary),
            b"application/x-www-form-urlencoded",
            None,
        ]
    )


def structural_points(body: bytes, delimiter: bytes) -> list[int]:
    """Offsets where the form's structure changes: each delimiter's start and end, each
    header line's end, each blank line, the body's end."""
    points = {0, len(body)}
    for token in (delimiter, b"\r\n", b"\r\n\r\n", b"--"):
        start = 0
        while (found := body.find(token, start)) != -1:
            points.update((found, found + len(token)))
            start = found + 1
    return sorted(points)


def mutate_byte(body: bytes, position: int, value: int) -> bytes:
    if not body:
        return bytes([value])
    at = position % len(body)
    kind = position % 3
    if kind == 0:
        return body[:at] + bytes([value]) + body[at + 1 :]
    if kind == 1:
        return body[:at] + bytes([value]) + body[at:]
    return body[:at] + body[at + 1 :]


# -- sending and checking ------------------------------------------------------------------


@dataclass
class Answer:
    status: int | None  # None: no answer
    content_type: bytes = b""
    body: bytes = b""
    seconds: float = 0.0
    note: str = ""
    headers: dict[bytes, bytes] = field(default_factory=dict)
    closed: bool | None = None  # the gateway closed the connection after it (when checked)


def send(port: int, case: Case, timeout_s: float) -> Answer:
    """Send ``case`` on a new connection; read the first answer."""
    started = time.monotonic()
    with socket.create_connection((LOOPBACK, port), timeout=timeout_s) as sock:
        with contextlib.suppress(OSError):  # closed early (a refusal): its answer may be there
            sock.sendall(case.request())
        return read_answer(sock, started + timeout_s, started)


def trickle(port: int, head: bytes, interval_s: float, timeout_s: float) -> Answer:
    """Send ``head``, then one byte every ``interval_s`` (a slow client) until an answer comes
    or the connection closes; the answer, with ``closed`` telling whether the gateway then
    closed the connection."""
    started = time.monotonic()
    with socket.create_connection((LOOPBACK, port), timeout=timeout_s) as sock:
        sock.sendall(head)
        while not select.select([sock], [], [], interval_s)[0]:
            if time.monotonic() - started > timeout_s:
                return Answer(None, note="hang", seconds=time.monotonic() - started)
            try:
                sock.sendall(b"x")
            except OSError:
                break
        answer = read_answer(sock, started + timeout_s, started)
        answer.closed = closed_by_peer(sock)
        return answer


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the other end closes ``sock`` (within :data:`ANSWER_MARGIN_S`)."""
    sock.settimeout(ANSWER_MARGIN_S)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def read_answer(sock: socket.socket, deadline: float, started: float) -> Answer:
    """The first HTTP answer on ``sock`` (h11 parses it), or why there is none by
    ``deadline``."""
    client = h11.Connection(h11.CLIENT)
    # Tell h11 a request went out (the real bytes were the caller's), so it reads the answer.
    client.send(h11.Request(method="POST", target="/", headers=[("Host", "x"), *_CHUNKED]))
    status, headers, body = None, {}, bytearray()
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError as error:
            return Answer(None, note=f"bad answer: {error}")
        if event is h11.NEED_DATA:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Answer(status, note="hang", seconds=time.monotonic() - started)
            sock.settimeout(remaining)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                return Answer(status, note="hang", seconds=time.monotonic() - started)
            except OSError:
                data = b""
            client.receive_data(data)
        elif isinstance(event, h11.Response):
            status, headers = event.status_code, dict(event.headers)
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            content_type = headers.get(b"content-type", b"")
            seconds = time.monotonic() - started
            return Answer(status, content_type, bytes(body), seconds, headers=headers)
        elif isinstance(event, h11.ConnectionClosed):
            return Answer(status, note="closed without an answer")


def problems(case: Case, answer: Answer, objects: Path) -> list[str]:
    """What is wrong with ``answer`` to ``case`` (nothing: an empty list)."""
    if answer.status is None:
        return [answer.note or "no answer"]
    found = []
    if answer.status >= 500:
        found.append(f"{answer.status}: {answer.body[:200]!r}")
    if answer.status >= 400 and not _is_problem(answer) and not _server_refusal(answer):
        found.append(f"{answer.status} refusal is not problem+json: {answer.body[:200]!r}")
    if answer.status == 202:
        found += _whole_parts_only(case, answer, objects)
    return found


def _is_problem(answer: Answer) -> bool:
    if answer.content_type != b"application/problem+json":
        return False
    try:
        body = json.loads(answer.body)
    except ValueError:
        return False
    return body.get("status") == answer.status and bool(body.get("detail"))


def _server_refusal(answer: Answer) -> bool:
    """uvicorn's own answer to a request it cannot frame (the app never sees it)."""
    return answer.status == 400 and answer.body == SERVER_REFUSAL


def _whole_parts_only(case: Case, answer: Answer, objects: Path) -> list[str]:
    if case.cut_before_close:
        return ["accepted a body cut before its closing boundary"]
    job = json.loads(answer.body)
    sent = case.body if case.framing != "long" else case.body[: max(0, len(case.body) - 9)]
    after = b"\r\n--" + case.boundary
    stored = next((objects / "inputs" / job["id"]).glob("input.*")).read_bytes()
    found = []
    if stored + after not in sent:
        found.append("accepted an image that no delimiter ended")
    scale = job["params"]["scale"]
    if scale is not None and scale != DEFAULT_SCALE:
        text = f"{scale:g}".encode()
        if not any(b"\r\n\r\n" + v + after in sent for v in (text, b"%.1f" % scale)):
            found.append(f"accepted scale={scale} that no delimiter ended")
    return found


@dataclass
class Tally:
    """Counts over a run: answers by status, refusals by kind, what was wrong."""

    cases: int = 0
    statuses: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    tags: Counter = field(default_factory=Counter)
    server_refusals: int = 0
    failures: list[str] = field(default_factory=list)
    failure_kinds: Counter = field(default_factory=Counter)
    slowest_s: float = 0.0

    def add(self, case: Case, answer: Answer, found: list[str]) -> None:
        self.cases += 1
        self.statuses[answer.status if answer.status is not None else answer.note] += 1
        self.tags.update(case.tags)
        self.slowest_s = max(self.slowest_s, answer.seconds)
        if answer.status and answer.status >= 400:
            if _server_refusal(answer):
                self.server_refusals += 1
            elif _is_problem(answer):
                self.kinds[json.loads(answer.body)["type"].rsplit(":", 1)[-1]] += 1
        for problem in found:
            self.failure_kinds[problem.split(":")[0][:60]] += 1
            self.failures.append(f"{problem} <- {case.tags} {case.request()[:300]!r}")


def run_batch(port: int, batch: list[Case], objects: Path, tally: Tally) -> list[str]:
    """Send ``batch`` at once (one connection each); returns what was wrong."""
    timeout_s = UPLOAD_TIMEOUT_S + ANSWER_MARGIN_S
    with ThreadPoolExecutor(len(batch)) as pool:
        answers = list(pool.map(lambda case: send(port, case, timeout_s), batch))
    found_all = []
    for case, answer in zip(batch, answers, strict=True):
        found = problems(case, answer, objects)
        tally.add(case, answer, found)
        found_all += found
    return found_all
