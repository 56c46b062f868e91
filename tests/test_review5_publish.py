"""Fifth hostile review (of 3aa291b: the fourth review's fixes).

Each test here failed on the reviewed tip and names one defect; each keeps its fix in place.
"""

from __future__ import annotations

import pytest

from tests.support.tinywheel import make_wheel

# -- 1. bundle: a simple/<project> that is a link has a file behind it deleted, then the publish refuses ---------

def test_review5_a_bundle_deletes_nothing_through_a_linked_project_folder(tmp_path):
    """3aa291b makes publish_simple refuse a project folder that is a link ("a failed publish leaves the tree as
    it was"), but bundle's _fill runs _drop_stale_simple_copies (and _drop_stale_own_wheel) first, and those
    follow the link: a wheel of that name with other bytes in the folder the link points to (outside the bundle)
    is unlinked, and only then does publish_simple refuse the link (or safe_join the path that leads out)."""
    from repack.errors import RepackError
    from repack.publish.bundle import _drop_stale_simple_copies, _write_simple

    wheel = make_wheel(tmp_path / "w", "demo", "1.0")
    elsewhere = tmp_path / "mirror" / "demo"  # a site's own index, outside the bundle
    elsewhere.mkdir(parents=True)
    theirs = elsewhere / wheel.name
    theirs.write_bytes(make_wheel(tmp_path / "other", "demo", "1.0", files={"demo/x.py": b"x = 1\n"}).read_bytes())
    kept = theirs.read_bytes()
    simple = tmp_path / "bundle" / "simple"
    simple.mkdir(parents=True)
    (simple / "demo").symlink_to(elsewhere, target_is_directory=True)

    with pytest.raises(RepackError):  # refused (a link, or a path that leads out of the tree): either will do
        _drop_stale_simple_copies(simple, [wheel])  # the two steps of bundle's _fill, in its order
        _write_simple(simple, [wheel])
    assert theirs.is_file() and theirs.read_bytes() == kept, "a file outside the bundle was deleted"


# -- 2. a top-level option spelled ambiguously before the command is said to belong after it ----------------------

def test_review5_an_ambiguous_top_level_option_is_not_said_to_go_after_the_command(capsys):
    """``--ve`` before the command is ambiguous at the top (--version, --verbose): argparse says so.
    _options_before_their_command resolves it against the command's options only, finds --verbose there, and
    says "--verbose is given before the command 'plan'" with the hint "give it after 'plan'", although -v/--verbose
    is a top-level option that is right where it is."""
    from repack.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["--ve", "plan", "0.6.6"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--verbose is given before the command" not in err, err
    assert "ambiguous option: --ve" in err, err
