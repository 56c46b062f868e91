"""Inputs a careless or hostile world gives: credentials in URLs, URLs that cannot be requested,
absurd options, a server that answers ranges short, an index without the file in a fallback chain."""

from __future__ import annotations

import json

import pytest

from repack.errors import SourceError
from repack.fetch.archive import SpanCache
from tests.support import synthetic
from tests.test_build_sources import FAST, VERSION, build, failed, succeeded

SECRET = "hunter2-s3cret"


def test_credentials_in_an_index_url_never_reach_the_output(run_cli, tmp_path, file_server, python_wheel):
    file_server.serve_project("flashinfer-python", [python_wheel(synthetic.FIXED)])  # no flashinfer-cubin there
    index = file_server.index_url.replace("http://", f"http://bob:{SECRET}@")
    out = tmp_path / "out"
    no_cubin = build(run_cli, out, "index+" + index)
    unknown = run_cli("plan", "0.6.9", "--index-url", index, "--json", *FAST)
    known = run_cli("plan", synthetic.FIXED, "--index-url", index, "--json", *FAST)
    for result in (no_cubin, unknown, known):
        assert SECRET not in result.stdout + result.stderr
    assert "has no project flashinfer-cubin" in failed(no_cubin, out)
    assert unknown.returncode == 1 and json.loads(unknown.stdout)["kind"] == "UnknownVersionError"
    assert "flashinfer-python 0.6.9 is not on http://127.0.0.1:" in json.loads(unknown.stdout)["error"]
    assert known.returncode == 0, known.stderr
    assert json.loads(known.stdout)["origin"].startswith(f"flashinfer-python {synthetic.FIXED} on http://127.0.0.1:")


def test_an_index_without_the_wheel_passes_the_turn_to_the_next_source(run_cli, tmp_path, file_server,
                                                                      python_wheel, small_cubin_wheel):
    file_server.serve_project("flashinfer-python", [python_wheel(synthetic.FIXED)])
    report = succeeded(build(run_cli, tmp_path / "out", "index+" + file_server.index_url,
                             str(small_cubin_wheel(VERSION))))
    assert report["source"].startswith("wheel ")
    assert "has no project flashinfer-cubin" in report["tried"][0][1]


# a URL the caller gave that cannot be requested is a usage error (exit 2), as it is for publish --index
@pytest.mark.parametrize("source, message", [("ftp://127.0.0.1/artifactory/", "is not an http(s) URL"),
                                             ("http://u:p@127.0.0.1:99999/x/", "is not a valid URL")])
def test_a_url_that_cannot_be_requested_is_one_clean_error(source, message, run_cli, tmp_path):
    out = tmp_path / "out"
    result = build(run_cli, out, source)
    assert result.returncode == 2 and message in result.stderr and "(--from)" in result.stderr
    assert ":p@" not in result.stderr and "Traceback" not in result.stderr and not out.exists()


def test_an_index_url_without_a_scheme_is_one_clean_error(run_cli, tmp_path):
    out = tmp_path / "out"
    result = build(run_cli, out, "index", extra=("--index-url", "notaurl"))
    assert result.returncode == 2 and "notaurl is not an http(s) URL" in result.stderr
    assert "(--index-url)" in result.stderr and not out.exists()


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "soon"])
def test_a_timeout_that_is_not_positive_is_a_usage_error(timeout, run_cli, tmp_path):
    result = run_cli("build", VERSION, "-o", str(tmp_path / "out"), "--timeout", timeout)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "positive number of seconds" in result.stderr


def test_a_source_date_epoch_past_2107_is_a_usage_error(run_cli, tmp_path, small_cubin_wheel):
    result = build(run_cli, tmp_path / "out", str(small_cubin_wheel(VERSION)), env={"SOURCE_DATE_EPOCH": "5000000000"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "before 2108" in result.stderr


class ShortReads:
    """A ByteSource that answers every read with at most 100 bytes, as a broken server might."""

    label = "short"
    size = 10_000

    def read(self, start: int, end: int) -> bytes:
        return b"x" * min(100, end - start)


def test_a_source_that_returns_less_than_asked_fails_instead_of_spinning():
    with pytest.raises(SourceError, match="no bytes at offset"):
        SpanCache(ShortReads()).read(0, 500)


def test_a_server_that_answers_ranges_short_is_a_clean_error(run_cli, tmp_path, file_server, small_cubin_wheel):
    file_server.serve_project("flashinfer-cubin", [small_cubin_wheel(VERSION)])
    file_server.max_range = 4096  # every 206 carries at most 4 KiB, whatever was asked
    out = tmp_path / "out"
    error = failed(build(run_cli, out, "index+" + file_server.index_url), out)
    assert "the server sent bytes" in error
