"""The store's prepared trees (tests/support/stored.py): made once, checked against their manifest
before every use, and made again, never trusted, when partial, damaged or made another way."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.stored import IN_USE, MANIFEST, manifest_of, problem_of, stored_tree

RECIPE = {"what": "two files and a link", "version": 1}


class Builder:
    """Makes a small tree and counts how often it was asked to."""

    def __init__(self, source: Path | None = None, fail: bool = False) -> None:
        self.calls, self.source, self.fail = 0, source, fail

    def __call__(self, partial: Path) -> dict:
        self.calls += 1
        (partial / "lib").mkdir(parents=True)
        (partial / "lib" / "a.py").write_text("A = 1\n")
        if self.fail:
            raise RuntimeError("the build was cut off")
        (partial / "bin").mkdir()
        (partial / "bin" / "python").symlink_to("/usr/bin/python3")
        sources = [{"url": self.source.as_uri(), "sha256": _sha(self.source)}] if self.source else []
        return {"sources": sources}


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_made_once_then_reused_with_a_manifest_of_every_file(tmp_path):
    build = Builder()
    first = stored_tree(tmp_path, RECIPE, build)
    again = stored_tree(tmp_path, RECIPE, build)
    assert first == again and build.calls == 1
    files = manifest_of(first)["files"]
    assert files["bin/python"] == ["/usr/bin/python3"]
    assert files["lib/a.py"][1:] == [6, _sha(first / "lib" / "a.py")]
    assert manifest_of(first)["recipe"] == RECIPE and problem_of(first, RECIPE) is None


@pytest.mark.parametrize("damage, problem", [
    (lambda t: (t / "lib" / "a.py").write_text("A = 2\n"), "its files differ from its manifest"),
    (lambda t: (t / "lib" / "b.py").write_text(""), "its files differ from its manifest"),
    (lambda t: (t / "lib" / "a.py").unlink(), "its files differ from its manifest"),
    (lambda t: os.chmod(t / "lib" / "a.py", (t / "lib" / "a.py").stat().st_mode ^ 0o100),  # a change under any umask
     "its files differ from its manifest"),
    (lambda t: ((t / "bin" / "python").unlink(), (t / "bin" / "python").symlink_to("/bin/sh")),
     "its files differ from its manifest"),
    (lambda t: (t / MANIFEST).unlink(), "no readable manifest (FileNotFoundError)"),
    (lambda t: (t / MANIFEST).write_text('{"recipe": '), "no readable manifest (JSONDecodeError)"),
])
def test_a_damaged_tree_is_made_again(tmp_path, damage, problem):
    build = Builder()
    tree = stored_tree(tmp_path, RECIPE, build)
    damage(tree)
    assert problem_of(tree, RECIPE).startswith(problem)
    assert stored_tree(tmp_path, RECIPE, build) == tree and build.calls == 2
    assert problem_of(tree, RECIPE) is None and (tree / "lib" / "a.py").read_text() == "A = 1\n"


def test_a_changed_local_source_makes_it_again(tmp_path):
    wheel = tmp_path / "torch-2.13.0+cpu-py3-none-any.whl"
    wheel.write_bytes(b"one build of torch")
    build = Builder(source=wheel)
    tree = stored_tree(tmp_path / "store", RECIPE, build)
    assert "%2B" in manifest_of(tree)["sources"][0]["url"]  # a file:// URL, percent-encoded as pip writes it
    wheel.write_bytes(b"another build, same name")
    assert problem_of(tree, RECIPE) == f"{wheel.as_uri()} is not the file it was made from"
    stored_tree(tmp_path / "store", RECIPE, build)
    assert build.calls == 2


def test_a_cut_off_build_leaves_no_tree_and_its_leftover_is_removed(tmp_path):
    with pytest.raises(RuntimeError, match="cut off"):
        stored_tree(tmp_path, RECIPE, Builder(fail=True))
    assert [p.name.endswith(".part") for p in tmp_path.iterdir() if p.is_dir()] == [True]
    tree = stored_tree(tmp_path, RECIPE, Builder())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([tree.name, f"{tree.name}.lock"])


def test_another_recipe_is_another_tree_and_an_old_one_unused_for_hours_is_removed(tmp_path):
    old = stored_tree(tmp_path, RECIPE, Builder())
    lock = tmp_path / f"{old.name}.lock"
    os.utime(lock, (lock.stat().st_atime, lock.stat().st_mtime - IN_USE - 60))
    new = stored_tree(tmp_path, {**RECIPE, "version": 2}, Builder())
    assert new != old and not old.exists()  # its lock file stays (see stored._prune): an empty file
    assert problem_of(new, RECIPE) == "made from another recipe"


def test_a_tree_handed_out_lately_is_left_to_the_session_copying_it(tmp_path):
    """Another session may be copying the tree it was handed (outside the lock) when a new recipe is made."""
    old = stored_tree(tmp_path, RECIPE, Builder())
    new = stored_tree(tmp_path, {**RECIPE, "version": 2}, Builder())
    assert new != old and problem_of(old, RECIPE) is None


def test_installed_and_unsatisfied_read_the_venvs_own_metadata(tmp_path):
    """What FlashinferEnv.use decides to install comes from the venv's dist-info, read without pip."""
    from tests.support.envs import FlashinferEnv

    site = tmp_path / "site-packages"
    for name, version in (("typing_extensions", "4.16.0"), ("Packaging", "24.1"), ("numpy", "2.4.6")):
        info = site / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    env = FlashinferEnv(tmp_path / "venv")
    env._site = site  # no interpreter to ask: the test's own site-packages stands in
    assert env.installed() == {"typing_extensions": "4.16.0", "packaging": "24.1", "numpy": "2.4.6"}
    wanted = ["typing-extensions>=4", "packaging>=24.2", "numpy", "tqdm"]
    assert env.unsatisfied(wanted) == ["packaging>=24.2", "tqdm"]
