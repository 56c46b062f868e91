"""The simple-API client: PEP 691 JSON and PEP 503 HTML pages, table-driven,
then both formats from a real server on 127.0.0.1."""

from __future__ import annotations

import json

import pytest

from repack.errors import SourceError, UnknownVersionError
from repack.fetch.index import IndexFile, find_wheel, parse_html_page, parse_json_page, project_files
from repack.fetch.transport import Transport
from tests.support import synthetic

PAGE = "https://mirror.example/simple/flashinfer-cubin/"
SHA = "ab" * 32
WHEEL = "flashinfer_cubin-0.6.6-py3-none-any.whl"


@pytest.mark.parametrize("entry, expected", [
    ({"filename": WHEEL, "url": "https://files.example/x/" + WHEEL, "hashes": {"sha256": SHA}, "size": 10},
     IndexFile(WHEEL, "https://files.example/x/" + WHEEL, SHA, 10)),
    ({"filename": WHEEL, "url": "../../files/" + WHEEL, "hashes": {}},
     IndexFile(WHEEL, "https://mirror.example/files/" + WHEEL)),
    ({"filename": WHEEL, "url": WHEEL, "hashes": {"md5": "0" * 32}, "requires-python": ">=3.10", "yanked": "bad"},
     IndexFile(WHEEL, PAGE + WHEEL, None, None, ">=3.10", True)),
    ({"filename": WHEEL, "url": WHEEL, "yanked": False},
     IndexFile(WHEEL, PAGE + WHEEL)),
], ids=["absolute", "relative", "no-sha256-yanked", "not-yanked"])
def test_parse_json_page(entry, expected):
    body = json.dumps({"meta": {"api-version": "1.1"}, "name": "flashinfer-cubin", "files": [entry]}).encode()
    assert parse_json_page(body, PAGE) == [expected]


@pytest.mark.parametrize("body", [b"<html>", b"{}", b'{"files": 3}', b"[1]", b'{"files": [{"filename": "x"}]}',
                                  b'{"files": ["x"]}'],
                         ids=["html", "no-files", "files-not-a-list", "a-list", "no-url", "entry-not-an-object"])
def test_parse_json_page_refuses_what_is_not_a_project_page(body):
    with pytest.raises(SourceError, match="is not a PEP 691 project page"):
        parse_json_page(body, PAGE)


@pytest.mark.parametrize("anchor, expected", [
    (f'<a href="../../files/{WHEEL}#sha256={SHA}">{WHEEL}</a>',
     IndexFile(WHEEL, "https://mirror.example/files/" + WHEEL, SHA)),
    (f'<a href="https://files.example/{WHEEL}#md5=00">x</a>',
     IndexFile(WHEEL, "https://files.example/" + WHEEL)),
    (f'<a href="{WHEEL}" data-requires-python="&gt;=3.10" data-yanked="">x</a>',
     IndexFile(WHEEL, PAGE + WHEEL, None, None, ">=3.10", True)),
    ('<a href="flashinfer_cubin-0.6.6%2Blocal-py3-none-any.whl">x</a>',
     IndexFile("flashinfer_cubin-0.6.6+local-py3-none-any.whl",
               PAGE + "flashinfer_cubin-0.6.6%2Blocal-py3-none-any.whl")),
], ids=["relative-sha256", "absolute-md5", "requires-python-yanked", "quoted"])
def test_parse_html_page(anchor, expected):
    body = f"<!DOCTYPE html><html><body>\n{anchor}<br/>\n<a name='no-href'>x</a></body></html>".encode()
    assert parse_html_page(body, PAGE) == [expected]


FILES = [IndexFile(name, "https://f/" + name) for name in (
    "flashinfer_cubin-0.6.5-py3-none-any.whl", "flashinfer_cubin-0.6.6.tar.gz",
    "flashinfer_cubin-0.6.6-py3-none-any.whl", "flashinfer_python-0.6.7-py3-none-any.whl",
    "flashinfer_cubin-0.6.7.post3-py3-none-any.whl", "not a wheel.whl")]


@pytest.mark.parametrize("version, filename", [
    ("0.6.6", "flashinfer_cubin-0.6.6-py3-none-any.whl"),
    ("0.6.6.0", "flashinfer_cubin-0.6.6-py3-none-any.whl"),  # versions compare as versions
    ("0.6.7post3", "flashinfer_cubin-0.6.7.post3-py3-none-any.whl"),
])
def test_find_wheel(version, filename):
    assert find_wheel(FILES, "flashinfer-cubin", version, "IDX").filename == filename


@pytest.mark.parametrize("version", ["0.6.7", "9.9.9"])  # 0.6.7 exists only for another project
def test_find_wheel_unknown_version_lists_what_is_there(version):
    with pytest.raises(UnknownVersionError) as caught:
        find_wheel(FILES, "flashinfer-cubin", version, "IDX")
    assert f"flashinfer-cubin {version} is not on IDX" in str(caught.value)
    assert "0.6.5, 0.6.6, 0.6.7, 0.6.7.post3" in str(caught.value)


@pytest.mark.parametrize("index_format", ["auto", "json", "html"])
def test_project_files_from_a_real_server(index_format, file_server, small_cubin_wheel):
    from tests.support.servers import file_sha256

    wheel = small_cubin_wheel(synthetic.VERSION)
    file_server.index_format = index_format
    index = file_server.serve_project("flashinfer-cubin", [wheel])
    transport = Transport(retries=0, timeout=5)
    files = project_files(transport, index, "Flashinfer_Cubin")  # names are normalised

    assert [(f.filename, f.url, f.sha256) for f in files] == [(wheel.name, file_server.url + "files/" + wheel.name,
                                                               file_sha256(wheel))]
    assert files[0].size == (None if index_format == "html" else wheel.stat().st_size)
    assert file_server.log[0].path == "/simple/flashinfer-cubin/"
    with pytest.raises(UnknownVersionError, match="has no project flashinfer-python"):
        project_files(transport, index, "flashinfer-python")
