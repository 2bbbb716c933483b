"""`embedrt serve` refuses bad settings up front: one `embedrt serve: error: ...` line, exit 2 (issue 13, item 7)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedrt.cli import main
from embedrt.cli.serve import OPTIONS


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for option in OPTIONS:
        monkeypatch.delenv(option.env, raising=False)


@pytest.fixture()
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def _serve(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(["serve", *argv])
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(("argv", "words"), [
    (["--http-port", "70000"], ["--http-port 70000", "0 to 65535", "EMBEDRT_HTTP_PORT"]),
    (["--grpc-port", "-1"], ["--grpc-port -1", "0 to 65535"]),
    (["--max-queue", "0"], ["--max-queue 0", "at least 1", "EMBEDRT_MAX_QUEUE"]),
    (["--max-inputs", "-5"], ["--max-inputs -5", "at least 1"]),
    (["--max-message-bytes", "0"], ["--max-message-bytes 0"]),
    (["--grace", "-1"], ["--grace -1", "at least 0"]),
    (["--grace", "nan"], ["--grace nan", "a number"]),
    (["--body-timeout", "-3"], ["--body-timeout -3"]),
    (["--tokenizer-threads", "0"], ["--tokenizer-threads 0"]),
    (["--max-wait-us", "-1"], ["--max-wait-us -1"]),
    (["--tls-cert", "cert.pem"], ["--tls-key", "certificate and its private key"]),
    (["--grpc-port", "7000", "--http-port", "7000"], ["--http-port 7000", "also the gRPC port"]),
    (["--max-queue", "lots"], ["--max-queue", "invalid int value"]),
], ids=["http-port", "grpc-port", "max-queue", "max-inputs", "message-bytes", "grace", "grace-nan", "body-timeout",
        "tokenizer-threads", "max-wait", "tls-half", "same-port", "not-a-number"])
def test_bad_flags_are_one_line_and_exit_2(argv: list[str], words: list[str], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _serve([str(tmp_path / "no-artefact-needed"), *argv], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embedrt serve: error: "), err
    for word in words:
        assert word in lines[0]


def test_a_port_in_use_is_one_line(taken_port: int, artefact: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDRT_LOG_LEVEL", "WARNING")
    for argv, flag in ((["--grpc-port", str(taken_port), "--http-port", "0"], "--grpc-port"),
                       (["--grpc-port", "0", "--http-port", str(taken_port)], "--http-port")):
        code, err = _serve([str(artefact), *argv], capsys)
        lines = [line for line in err.strip().splitlines() if "embedrt serve" in line]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert lines[0].startswith(f"embedrt serve: error: {flag} {taken_port}: cannot listen"), err


def test_an_unreadable_tls_file_is_one_line(tmp_path: Path, artefact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "key.pem"
    key.write_text("not a key")
    code, err = _serve([str(artefact), "--grpc-port", "0", "--http-port", "0", "--tls-cert",
                        str(tmp_path / "missing.pem"), "--tls-key", str(key)], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("embedrt serve: error: --tls-")
