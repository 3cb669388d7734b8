"""http1.ResponseParser: answers fed whole, and byte by byte as a slow socket would give them."""

from __future__ import annotations

import asyncio

import pytest

from codeb_tui.infra.http1 import (BodyTooLarge, RemoteProtocolError, Response,
                                   ResponseParser)


def parse(raw: bytes, step: int | None, keep_body: bool = True, max_body: int = 1000
          ) -> tuple[Response, bytes]:
    """Feed `raw` in pieces of `step` bytes (None: whole), then end of stream if the answer
    still wants more. The answer and what was left in the buffer."""
    parser = ResponseParser(max_body, keep_body)
    buf = bytearray()
    pieces = [raw] if step is None else [raw[i:i + step] for i in range(0, len(raw), step)]
    for at, piece in enumerate(pieces):
        buf += piece
        answer = parser.feed(buf)
        if answer is not None:
            return answer, bytes(buf) + b"".join(pieces[at + 1:])
    return parser.eof(buf), bytes(buf)


CASES = [
    # (raw answer, status, keep_alive, body, left in the buffer)
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloNEXT", 200, True, b"hello", b"NEXT"),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
     201, True, b"ok", b""),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: y\r\n\r\nNEXT", 200, True, b"hello!", b"NEXT"),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, False, b"ok", b""),
    (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok",
     200, True, b"ok", b""),
    (b"HTTP/1.1 302 Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", 302, False, b"", b""),
    (b"HTTP/1.1 204 No Content\r\n\r\nNEXT", 204, True, b"", b"NEXT"),
    (b"HTTP/1.1 500 Oops\r\n\r\nclose-delimited body", 500, False, b"close-delimited body", b""),
]


@pytest.mark.parametrize("step", [None, 1, 7])
@pytest.mark.parametrize("raw,status,keep,body,left", CASES)
def test_answers_whole_and_in_pieces(raw, status, keep, body, left, step):
    answer, rest = parse(raw, step)
    assert (answer.status, answer.keep_alive, answer.body) == (status, keep, body)
    assert rest == left


def test_body_is_skipped_when_not_kept():
    answer, _ = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 3, keep_body=False)
    assert answer.status == 200 and answer.body == b""


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # closed mid-body
    b"HTTP/1.1 200 OK\r\nContent-Le",  # closed mid-head
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",  # closed mid-chunk
])
def test_close_before_the_end_is_incomplete(raw):
    with pytest.raises(asyncio.IncompleteReadError):
        parse(raw, 4)


@pytest.mark.parametrize("raw,error", [
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", RemoteProtocolError),
    (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", RemoteProtocolError),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", RemoteProtocolError),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n", BodyTooLarge),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n", BodyTooLarge),
    (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 1001, BodyTooLarge),
    (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000, RemoteProtocolError),  # endless head
])
def test_bad_answers_are_named(raw, error):
    with pytest.raises(error):
        parse(raw, 512)
