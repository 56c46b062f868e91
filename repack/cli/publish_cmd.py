"""`publish`: to an index, a static simple tree, or a conda channel."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repack.cli.common import (
    EXIT_OK,
    EXIT_TABLE,
    _clear_progress,
    cache_dir,
    common_options,
    emit_json,
    keyring_prompts,
    positive_seconds,
    progress_printer,
    retry_count,
)
from repack.errors import InputError, RepackError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from repack.publish.simple import Added
    from repack.publish.upload import Credentials, UploadResult

# -- publish -------------------------------------------------------------------------

PUBLISH_EPILOG = """\
examples:
  flashinfer-repack publish dist/*.whl --index http://localhost:8080/      pypiserver, devpi, Artifactory...
  flashinfer-repack publish dist/*.whl --repository internal               an index named in ~/.pypirc
  flashinfer-repack publish dist/*.whl --simple /srv/simple                 a static tree for pip --index-url
  flashinfer-repack publish dist/*.conda --channel /srv/conda               a conda channel directory

credentials for --index or --repository, first found wins (never printed, logged or written anywhere):
  1. --username / --password
  2. user:password in the --index URL
  3. $FLASHINFER_REPACK_USERNAME / $FLASHINFER_REPACK_PASSWORD
  4. $TWINE_USERNAME / $TWINE_PASSWORD
  5. username and password of the --repository section of ~/.pypirc (as twine reads it)
  6. keyring, when installed, for a username from 1-5 without a password (as twine asks it)
  7. the entry for the host in $NETRC or ~/.netrc
a file already there with the same sha256 is skipped; the same name with other bytes is refused.
every wheel placed or sent is checked against its RECORD first; one that passed is remembered by its sha256
in the cache (--cache-dir; --no-cache checks again), so the same bytes are not inflated twice; a verdict
counts only in a folder of yours (0700) as a file of yours that no one else can write.
--simple writes a static PEP 503/691 tree (see 'pydoc repack.publish.simple'): serve it with any web server,
or point pip at it directly: pip install --index-url file:///path/to/DIR ...
"""


def register_publish(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("publish", help="add built packages to an index, a static simple tree or a conda channel",
                       description="Publish wheels to a package index through the upload API that twine uses "
                                   "(pypiserver, devpi, Artifactory, Nexus...), or into a static simple-API "
                                   "directory, or conda packages into a channel directory. Every wheel is "
                                   "checked against its own RECORD first.",
                       epilog=PUBLISH_EPILOG + EXIT_TABLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="built packages to publish")
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--index", metavar="URL", help="upload URL of an index, e.g. http://host:8080/ (pypiserver) "
                                                     "or http://host:3141/USER/INDEX/ (devpi)")
    dest.add_argument("--repository", metavar="NAME",
                      help="an index named in ~/.pypirc (its repository URL and credentials, as twine reads them)")
    dest.add_argument("--simple", type=Path, metavar="DIR", help="a static simple-API tree, updated in place")
    dest.add_argument("--channel", type=Path, metavar="DIR", help="a conda channel directory, re-indexed in place")
    p.add_argument("--username", help="index user (prefer the environment or ~/.netrc, see below)")
    p.add_argument("--password", help="index password (visible to other local users in the process list; "
                                      "prefer $FLASHINFER_REPACK_PASSWORD or ~/.netrc)")
    p.add_argument("--config-file", type=Path, metavar="FILE", default=None,
                   help="the pypirc file for --repository (default: ~/.pypirc)")
    p.add_argument("--simple-url", metavar="URL",
                   help="the index's simple API, read to skip files already there (default: URL/simple/, "
                        "then URL/+simple/)")
    common_options(p, network=False)
    p.add_argument("--cache-dir", metavar="DIR", type=Path,
                   help="cache directory: wheels that passed their RECORD check are remembered there by sha256")
    p.add_argument("--no-cache", action="store_true", help="check every wheel's RECORD, remembering nothing")
    p.add_argument("--timeout", type=positive_seconds, default=60.0, metavar="S",
                   help="seconds for a connection and for each read, and the longest wait for keyring's "
                        "answer (default 60)")
    p.add_argument("--retries", type=retry_count, default=3, metavar="N",
                   help="retries when a gateway answers 502/503/504 (default 3)")
    p.set_defaults(func=cmd_publish)


def cmd_publish(args: argparse.Namespace) -> int:
    if args.channel is not None:
        return publish_to_channel(args)
    from repack.publish.checked import CheckedWheels
    from repack.publish.distfile import UPLOAD_DIGESTS, RecordCheck, check_record, read_distfile, wheel_identity

    _each_once(args.files)
    progress = progress_printer(args)
    checked = CheckedWheels(None if (root := cache_dir(args)) is None else root / "record-checked")
    if args.simple is not None:
        from repack.publish.simple import publish_simple

        # identity and metadata checked here; each new file is hashed and its RECORD checked as copied into
        # the tree, before any is placed; a file the tree holds already is hashed only to compare
        dists = [read_distfile(f, check_record=False, digests=()) for f in args.files]
        results: Sequence[UploadResult | Added] = publish_simple(
            args.simple, dists, check=lambda dist, copy: check_record(dist, progress, checked, at=copy))
        destination = str(args.simple)
    else:
        # every file's identity and metadata is checked, and both its digests taken (on two threads), before
        # anything is sent; its sha256 decides whether it will be sent.  The RECORD checks of the files to be
        # sent run while the largest is sent, whose body ends only once every one has passed.  The index's
        # pages are read on a thread while the files are hashed (once their names were checked).
        import concurrent.futures
        import threading

        from repack.fetch.index import IndexFile
        from repack.publish.upload import Uploader

        names = [wheel_identity(f)[0] for f in args.files]
        url, credentials = upload_target(args)
        uploader = Uploader(url, credentials, simple_url=args.simple_url, timeout=args.timeout,
                            retries=args.retries, progress=progress)
        asked: concurrent.futures.Future[list[IndexFile | None]] = concurrent.futures.Future()
        # a daemon thread: a wheel refused here is reported at once, not after a slow index has answered
        threading.Thread(target=_into, args=(asked, lambda: [uploader.listed_file(n, Path(f).name) for n, f in
                                                             zip(names, args.files, strict=True)]),
                         daemon=True, name="index-pages").start()
        dists = [read_distfile(f, check_record=False, digests=UPLOAD_DIGESTS) for f in args.files]
        listings = asked.result()  # a file listed already is skipped or refused
        check = RecordCheck([d for d, listed in zip(dists, listings, strict=True) if listed is None], checked,
                            progress)
        try:
            results = uploader.publish(dists, listings, check.wait)
        except RepackError as exc:
            # the upload failed (or the index answered too early): the checks still finish, and a damaged
            # wheel is the error to show before what the network said
            try:
                failed = check.failure(wait=True)
            except BaseException:  # ^C while waiting: stop the checks now
                check.cancel()
                raise
            if failed is not None and failed is not exc:
                raise failed from exc
            raise
        except BaseException:  # ^C: stop the checks now
            check.cancel()
            raise
        check.wait()  # whatever the index answered, nothing is reported published unless every wheel passed
        destination = uploader.server
    _clear_progress()
    if args.json:
        emit_json({"ok": True, "destination": destination, "files": [r.to_json() for r in results]})
    elif not args.quiet:
        for r in results:
            note = " (already there, same sha256)" if r.action == "skipped" else ""
            if r.action == "uploaded" and not getattr(r, "verified", True):
                note = " (not confirmed: the index's page does not list it with this sha256 yet)"
            print(f"{r.action} {r.filename}{note} -> {destination}")
    return EXIT_OK


def _into(future: Any, work: Callable[[], Any]) -> None:
    """``work()``'s result or exception into ``future`` (run on a thread of its own)."""
    try:
        future.set_result(work())
    except BaseException as exc:  # handed over to the waiting thread, which raises it
        future.set_exception(exc)


def _each_once(files: Sequence[Path]) -> None:
    """A wheel named twice is a mistake in the command line, refused before anything is read."""
    names = [Path(f).name for f in files]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise InputError(f"{twice} is given more than once", "give each wheel once", value=twice)


def upload_target(args: argparse.Namespace) -> tuple[str, Credentials | None]:
    """The upload URL and credentials in twine's order: command line and environment, pypirc, keyring; then netrc.

    The username and the password each come from the first source that has one; a pypirc password goes
    only with its own username; a username still without a password asks keyring, then netrc.
    """
    from repack.fetch.urlpolicy import redact
    from repack.publish.pypirc import keyring_password, read_repository
    from repack.publish.upload import find_credentials, netrc_path

    repo = None
    if args.repository:
        repo = read_repository(args.config_file or Path(os.path.expanduser("~/.pypirc")), args.repository)
    url: str = args.index or (repo.url if repo else "")  # argparse requires one of the two
    wait = None if keyring_prompts() else args.timeout
    return url, find_credentials(url, username=args.username, password=args.password, env=os.environ,
                                 netrc_file=netrc_path(os.environ), given_as="--username/--password",
                                 repository=(repo.username, repo.password, f"{repo.source} [{repo.name}]")
                                 if repo else None,
                                 keyring=lambda user: keyring_password(redact(url), user, wait))


def publish_to_channel(args: argparse.Namespace) -> int:
    from repack.publish.channel import publish_channel

    results = publish_channel(args.channel, args.files)
    if args.json:
        emit_json({"ok": True, "destination": str(args.channel), "files": [r.to_json() for r in results]})
    elif not args.quiet:
        for r in results:
            note = " (already there, same sha256)" if r.action == "skipped" else ""
            print(f"{r.action} {r.subdir}/{r.filename}{note} -> {args.channel}")
        print(f"indexed {args.channel} (repodata.json); use it as: conda install -c file://"
              f"{args.channel.resolve()} ...")
    return EXIT_OK
