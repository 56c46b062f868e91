"""``publish --simple DIR``: a static index tree that real pip and uv install from,
over ``file://`` and from a plain static web server on 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from repack.fetch.index import parse_html_page, parse_json_page, project_files
from repack.fetch.transport import Transport
from tests.support import synthetic
from tests.support.installs import fresh_venv, pip_into, site_packages, uv_into
from tests.support.tinywheel import make_wheel, tamper

PROJECT = "flashinfer-cubin-headers"
EXPORT = "flashinfer_cubin/cubins/flashinfer/trtllm/batched_gemm/trtllmGen_bmm_export"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wheel_metadata(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA")))


class StaticServer:
    """A plain static web server (the stdlib's) over a directory, logging the paths asked for."""

    def __init__(self, root: Path) -> None:
        log = self.log = []

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, fmt, *args):
                log.append(self.path)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def __enter__(self) -> StaticServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def demo_wheels(tmp_path):
    """demo 1.0 (any Python 3) and demo 2.0 (Requires-Python <3: pip must pass it over from the page)."""
    out = tmp_path / "demo"
    return [make_wheel(out, "fi-demo", "1.0", requires_python=">=3.8"),
            make_wheel(out, "fi-demo", "2.0", requires_python="<3")]


def publish(run_cli, tree: Path, *wheels: Path):
    result = run_cli("publish", "--simple", str(tree), *map(str, wheels), "--json")
    return result, (json.loads(result.stdout) if result.returncode == 0 else None)


def test_pages_hashes_and_pep658_metadata(tmp_path, run_cli, headers_wheel):
    wheel = headers_wheel(synthetic.VERSION)
    tree = tmp_path / "simple"
    result, report = publish(run_cli, tree, wheel)
    assert result.returncode == 0, result.stderr
    assert [f["action"] for f in report["files"]] == ["added"]

    stored = tree / PROJECT / wheel.name
    assert stored.read_bytes() == wheel.read_bytes()
    meta_file = stored.with_name(stored.name + ".metadata")
    assert meta_file.read_bytes() == wheel_metadata(wheel)  # PEP 658: the METADATA file, byte for byte

    page = (tree / PROJECT / "index.html").read_text()
    [entry] = parse_html_page(page.encode(), (tree / PROJECT).as_uri() + "/")
    assert entry.sha256 == sha256(wheel)
    assert entry.requires_python == "<4.0,>=3.10"  # html-escaped in the page, unescaped by the parser
    assert 'data-requires-python="&lt;4.0,&gt;=3.10"' in page
    assert f'data-core-metadata="sha256={sha256(meta_file)}"' in page
    assert f'data-dist-info-metadata="sha256={sha256(meta_file)}"' in page

    data = json.loads((tree / PROJECT / "index.json").read_text())
    assert data["meta"]["api-version"] == "1.1" and data["versions"] == [synthetic.VERSION]
    [jentry] = data["files"]
    assert jentry["size"] == wheel.stat().st_size
    assert jentry["core-metadata"] == {"sha256": sha256(meta_file)}
    assert parse_json_page(json.dumps(data).encode(), (tree / PROJECT).as_uri() + "/") == [
        entry.__class__(entry.filename, entry.url, entry.sha256, wheel.stat().st_size, entry.requires_python)]
    root = json.loads((tree / "index.json").read_text())
    assert root["projects"] == [{"name": PROJECT}]
    assert f'href="{PROJECT}/"' in (tree / "index.html").read_text()


def test_pip_and_uv_install_over_file_url(tmp_path, run_cli, headers_wheel, demo_wheels):
    wheel = headers_wheel(synthetic.VERSION)
    tree = tmp_path / "simple"
    assert publish(run_cli, tree, wheel, *demo_wheels)[0].returncode == 0

    python = fresh_venv(tmp_path / "venv")
    # --no-deps: flashinfer-python and flashinfer-cubin are not in this tree (test_bundle installs all three)
    done = pip_into(python, "install", "--no-deps", "--index-url", tree.as_uri() + "/", f"{PROJECT}=={synthetic.VERSION}", "fi-demo")
    assert done.returncode == 0, done.stderr
    site = site_packages(python)
    assert (site / EXPORT / ".artifact_hash").read_bytes()== synthetic.ARTIFACT.encode()
    assert (site / EXPORT / "BatchedGemmEnums.h").is_file()
    assert (site / "fi_demo" / "__init__.py").read_text() == "VERSION = '1.0'\n"  # 2.0 needs Python <3

    uv_python = fresh_venv(tmp_path / "uv-venv")
    uv = uv_into(uv_python, tmp_path / "uv-cache", "--no-deps", "--index-url", tree.as_uri() + "/", f"{PROJECT}=={synthetic.VERSION}")
    assert uv.returncode == 0, uv.stderr
    assert (site_packages(uv_python) / EXPORT / "BatchedGemmEnums.h").is_file()


def test_static_web_server_pep658_and_requires_python(tmp_path, run_cli, headers_wheel, demo_wheels):
    wheel = headers_wheel(synthetic.VERSION)
    tree = tmp_path / "simple"
    assert publish(run_cli, tree, wheel, *demo_wheels)[0].returncode == 0
    python = fresh_venv(tmp_path / "venv")
    with StaticServer(tree) as server:
        files = project_files(Transport(retries=0), server.url, PROJECT)  # our own client reads it too
        assert [(f.filename, f.sha256) for f in files] == [(wheel.name, sha256(wheel))]

        dry = pip_into(python, "install", "--dry-run", "--no-deps", "--index-url", server.url, f"{PROJECT}=={synthetic.VERSION}")
        assert dry.returncode == 0, dry.stderr
        assert f"/{PROJECT}/{wheel.name}.metadata" in server.log  # pip resolved from the PEP 658 file
        assert f"/{PROJECT}/{wheel.name}" not in server.log        # without fetching the wheel

        done = pip_into(python, "install", "--index-url", server.url, "fi-demo")
        assert done.returncode == 0, done.stderr
        assert not [p for p in server.log if "fi_demo-2.0" in p]  # data-requires-python kept pip off 2.0
    assert (site_packages(python) / "fi_demo" / "__init__.py").read_text() == "VERSION = '1.0'\n"


def test_updated_in_place_idempotent_and_refuses_other_bytes(tmp_path, run_cli, headers_wheel, demo_wheels):
    tree = tmp_path / "simple"
    first = demo_wheels[0]
    assert publish(run_cli, tree, first)[0].returncode == 0
    pages = {p: p.read_bytes() for p in tree.rglob("index.*")}

    again, report = publish(run_cli, tree, first)
    assert again.returncode == 0 and report["files"][0]["action"] == "skipped"
    assert {p: p.read_bytes() for p in tree.rglob("index.*")} == pages

    added, _ = publish(run_cli, tree, headers_wheel(synthetic.VERSION))
    assert added.returncode == 0, added.stderr
    root = json.loads((tree / "index.json").read_text())
    assert [p["name"] for p in root["projects"]] == ["fi-demo", PROJECT]

    other = make_wheel(tmp_path / "other", "fi-demo", "1.0", files={"fi_demo/__init__.py": b"OTHER = 1\n"})
    refused, _ = publish(run_cli, tree, other)
    assert refused.returncode == 1
    assert "already has fi-demo/fi_demo-1.0-py3-none-any.whl with sha256" in refused.stderr
    assert (tree / "fi-demo" / first.name).read_bytes() == first.read_bytes()
    assert not [p for p in tree.rglob("*") if p.name.endswith((".tmp", ".part"))]


def test_tampered_wheel_is_refused_before_anything_is_written(tmp_path, run_cli, headers_wheel):
    bad = tamper(headers_wheel(synthetic.VERSION), tmp_path / "bad" / headers_wheel(synthetic.VERSION).name, "BatchedGemmEnums.h")
    tree = tmp_path / "simple"
    result, _ = publish(run_cli, tree, bad)
    assert result.returncode == 1
    assert "does not match its own RECORD" in result.stderr and "BatchedGemmEnums.h" in result.stderr
    assert not (tree / PROJECT).exists()


def test_same_files_give_the_same_pages(tmp_path, run_cli, headers_wheel, demo_wheels):
    files = [headers_wheel(synthetic.VERSION), *demo_wheels]
    one, two = tmp_path / "one", tmp_path / "two"
    assert publish(run_cli, one, *files)[0].returncode == 0
    for f in reversed(files):
        assert publish(run_cli, two, f)[0].returncode == 0
    pages = sorted(p.relative_to(one) for p in one.rglob("*") if p.name.startswith("index.") or p.suffix == ".metadata")
    assert len(pages) == 2 + 2 * 2 + 3
    assert all((one / p).read_bytes() == (two / p).read_bytes() for p in pages)


def test_a_wheel_checked_once_is_not_inflated_again_for_another_tree(tmp_path, run_cli, headers_wheel):
    """The RECORD check's pass is remembered by sha256 in the cache; --no-cache checks again."""
    wheel = headers_wheel(synthetic.VERSION)
    cache = str(tmp_path / "cache")
    runs = {}
    for tree, extra in (("a", ["--cache-dir", cache]), ("b", ["--cache-dir", cache]), ("c", ["--no-cache"])):
        runs[tree] = run_cli("publish", "--simple", str(tmp_path / tree), str(wheel), "-v", *extra)
        assert runs[tree].returncode == 0, runs[tree].stderr
        assert sha256(tmp_path / tree / PROJECT / wheel.name) == sha256(wheel)
    assert "RECORD checked before" not in runs["a"].stderr
    assert f"{wheel.name}: RECORD checked before" in runs["b"].stderr
    assert "RECORD checked before" not in runs["c"].stderr
    assert [p.name for p in (tmp_path / "cache" / "record-checked").iterdir()] == [f"{sha256(wheel)}.json"]


def test_a_verdict_planted_in_a_cache_others_can_write_does_not_let_a_tampered_wheel_through(tmp_path, run_cli):
    """A pass for the tampered bytes, written where the group can write: the full check runs and refuses."""
    good = make_wheel(tmp_path / "good", "fi-demo", "1.0", files={"fi_demo/__init__.py": b"A = 1\n"})
    bad = tamper(good, tmp_path / "bad" / good.name, "__init__.py")
    folder = tmp_path / "cache" / "record-checked"
    folder.mkdir(parents=True)
    entry = folder / f"{sha256(bad)}.json"
    entry.write_text(json.dumps({"sha256": sha256(bad), "size": bad.stat().st_size}))
    entry.chmod(0o600)
    folder.chmod(0o770)
    result = run_cli("publish", "--simple", str(tmp_path / "tree"), str(bad), "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 1, result.stderr
    assert "does not match its own RECORD" in result.stderr
    assert not (tmp_path / "tree" / "fi-demo").exists()


def test_a_file_where_the_tree_should_be_or_a_wheel_given_twice_is_a_usage_error(tmp_path, run_cli):
    wheel = make_wheel(tmp_path / "w", "fi-demo", "1.0", files={"fi_demo/__init__.py": b"A = 1\n"})
    tree = tmp_path / "tree"
    assert publish(run_cli, tree, wheel)[0].returncode == 0
    for where in (tree / "index.html", tree / "index.html" / "deeper"):
        result, _ = publish(run_cli, where, wheel)
        assert result.returncode == 2, result.stderr
        assert f"{tree / 'index.html'} is " in result.stderr and "File exists" not in result.stderr
        assert ("is not a directory" if where.name == "index.html" else "is a file, not a folder") in result.stderr
    twice, _ = publish(run_cli, tmp_path / "other", wheel, wheel)
    assert twice.returncode == 2 and f"{wheel.name} is given more than once" in twice.stderr
    assert not (tmp_path / "other").exists()
