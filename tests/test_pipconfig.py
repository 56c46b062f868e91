"""The index pip would use: every config location, PIP_CONFIG_FILE, PIP_* and '%', checked against pip itself.

The oracle is the pip installed beside these tests, run in a scratch venv (so that its ``sys.prefix``
and thus its *site* file are ours) with the same environment: what its ``install`` command's parser
takes as ``index_url`` and ``extra_index_urls`` after reading its config is what we must find.
"""

from __future__ import annotations

import json
import os
import subprocess
import venv
from pathlib import Path

import pip
import pytest

from repack.pipconfig import PYPI, config_files, resolve_index

ORACLE = ("import json; from pip._internal.commands import create_command; c = create_command('install'); "
          "o, _ = c.parse_args([]); print(json.dumps([o.index_url, o.extra_index_urls]))")


@pytest.fixture
def world(tmp_path):
    """A home, an XDG tree, a venv without pip (pip comes from PYTHONPATH) and a clean environment."""
    prefix = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(prefix)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "XDG_"))}
    environ.update(HOME=str(tmp_path / "home"), XDG_CONFIG_DIRS=str(tmp_path / "xdg"))
    return tmp_path, prefix, environ


def pip_says(prefix: Path, environ: dict) -> list:
    env = dict(environ, PYTHONPATH=str(Path(pip.__file__).parents[1]))
    out = subprocess.run([str(prefix / "bin" / "python"), "-c", ORACLE], env=env, capture_output=True, text=True,
                         cwd=prefix, check=True).stdout
    index, extra = json.loads(out)
    return [PYPI if index == PYPI.rstrip("/") else index, extra]  # pip's default lacks the final slash


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def ours(prefix: Path, environ: dict) -> list:
    s = resolve_index(environ, str(prefix))
    return [s.index_url, list(s.extra_index_urls)]


@pytest.mark.parametrize("where", ["xdg/pip/pip.conf", "home/.pip/pip.conf", "home/.config/pip/pip.conf",
                                   "venv/pip.conf", "custom.conf"])
def test_each_location_is_read_like_pip(world, where):
    tmp, prefix, environ = world
    conf = write(tmp / where, "[global]\nindex-url = http://mirror.example/simple/\n")
    if where == "custom.conf":
        environ["PIP_CONFIG_FILE"] = str(conf)
    got = resolve_index(environ, str(prefix))
    assert [got.index_url, list(got.extra_index_urls)] == pip_says(prefix, environ)
    assert got.index_url == "http://mirror.example/simple/"
    assert got.index_origin == f"{conf} [global]"


def test_xdg_config_home_moves_the_user_file(world):
    tmp, prefix, environ = world
    environ["XDG_CONFIG_HOME"] = str(tmp / "cfg")
    conf = write(tmp / "cfg/pip/pip.conf", "[install]\nindex-url = http://xdg-home.example/simple/\n")
    assert ours(prefix, environ) == pip_says(prefix, environ) == ["http://xdg-home.example/simple/", []]
    assert resolve_index(environ, str(prefix)).index_origin == f"{conf} [install]"


def test_override_order_files_sections_and_variables(world):
    tmp, prefix, environ = world
    write(tmp / "xdg/pip/pip.conf", "[global]\nindex-url = http://global.example/simple/\n")
    write(tmp / "home/.config/pip/pip.conf", "[install]\nindex-url = http://user-install.example/simple/\n"
          "extra-index-url = http://a.example/ http://b.example/\n")
    write(tmp / "venv/pip.conf", "[global]\nindex-url = http://site-global.example/simple/\n")
    # [install] in the user file beats [global] in the later site file: sections first, then files
    assert ours(prefix, environ) == pip_says(prefix, environ)
    assert ours(prefix, environ)[0] == "http://user-install.example/simple/"
    environ["PIP_EXTRA_INDEX_URL"] = "http://env.example/"
    environ["PIP_INDEX_URL"] = "http://env-var.example/simple/"
    assert ours(prefix, environ) == pip_says(prefix, environ) == ["http://env-var.example/simple/",
                                                                  ["http://env.example/"]]
    assert resolve_index(environ, str(prefix)).index_origin == "PIP_INDEX_URL"


def test_existing_pip_config_file_hides_user_files_but_not_site(world):
    tmp, prefix, environ = world
    write(tmp / "home/.pip/pip.conf", "[global]\nindex-url = http://user.example/simple/\n")
    environ["PIP_CONFIG_FILE"] = str(write(tmp / "env.conf", "[global]\ntimeout = 5\n"))
    assert ours(prefix, environ) == pip_says(prefix, environ) == [PYPI, []]
    environ["PIP_CONFIG_FILE"] = str(tmp / "missing.conf")  # a missing file hides nothing
    assert ours(prefix, environ) == pip_says(prefix, environ)
    assert ours(prefix, environ)[0] == "http://user.example/simple/"


def test_devnull_reads_no_file_at_all(world):
    tmp, prefix, environ = world
    write(tmp / "venv/pip.conf", "[global]\nindex-url = http://site.example/simple/\n")
    environ["PIP_CONFIG_FILE"] = os.devnull
    assert ours(prefix, environ) == pip_says(prefix, environ) == [PYPI, []]
    assert resolve_index(environ, str(prefix)).files_read == ()


def test_percent_encoded_password_is_kept_verbatim(world):
    tmp, prefix, environ = world
    url = "https://user:p%40ss%25w0rd@mirror.example/simple/"
    write(tmp / "venv/pip.conf", f"[global]\nindex-url = {url}\n")
    assert ours(prefix, environ) == pip_says(prefix, environ) == [url, []]


def test_empty_value_falls_through_and_names_normalise(world):
    tmp, prefix, environ = world
    write(tmp / "home/.pip/pip.conf", "[global]\nINDEX_URL = http://legacy.example/simple/\n")
    write(tmp / "home/.config/pip/pip.conf", "[install]\nindex-url =\n")
    assert ours(prefix, environ) == pip_says(prefix, environ)
    assert ours(prefix, environ)[0] == "http://legacy.example/simple/"


def test_file_list_matches_pip_order(world):
    tmp, prefix, environ = world
    kinds = [(f.kind, f.path) for f in config_files(environ, str(prefix))]
    home = environ["HOME"]
    assert kinds == [("global", f"{tmp}/xdg/pip/pip.conf"), ("global", "/etc/pip.conf"),
                     ("user", f"{home}/.pip/pip.conf"), ("user", f"{home}/.config/pip/pip.conf"),
                     ("site", f"{prefix}/pip.conf")]
    del environ["XDG_CONFIG_DIRS"]
    assert config_files(environ, None)[0].path == "/etc/xdg/pip/pip.conf"


def test_a_broken_file_is_a_usage_error_naming_it(world):
    from repack.errors import InputError

    tmp, prefix, environ = world
    conf = write(tmp / "venv/pip.conf", "index-url = no section\n")
    with pytest.raises(InputError, match=f"pip's config file {conf} cannot be read"):
        resolve_index(environ, str(prefix))
