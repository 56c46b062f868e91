"""Conda channels and prefixes for tests, driven by py-rattler and py-rattler-build.

conda itself is not on PyPI, and no conda channel can be reached here, so a
test channel holds *stand-ins* for what conda-forge would provide (``python``,
``flashinfer-python``, ``flashinfer-cubin``, ``packaging``, ``requests``),
made at test time by rattler-build's own package assembler: a writer
independent of flashinfer-repack's, so that rattler is never only reading
packages written by the code under test.

A stand-in ``python`` is a linux-64 package named ``python`` of a given
version; rattler derives ``lib/pythonX.Y/site-packages`` (where noarch:
python files land) from that version.  Its ``bin/python`` either fails
loudly or, for recipe builds, runs a real interpreter (``executable``).
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from pathlib import Path

STANDIN_PLATFORM = "linux-64"
FIXED_TIME = datetime(2020, 1, 1, tzinfo=timezone.utc)
EXPORT_DIR = "flashinfer_cubin/cubins/flashinfer/trtllm/batched_gemm/trtllmGen_bmm_export"


def standin(out_dir: Path, name: str, version: str, *, files: dict[str, str] | None = None,
            platform: str = "noarch", noarch: str | None = "generic", depends: list[str] | None = None) -> Path:
    """A small package ``name==version`` whose files are ``files`` (path -> text), in ``out_dir/<subdir>/``."""
    from rattler_build import assemble_package

    staging = Path(out_dir) / ".staging" / f"{name}-{version}"
    for rel, text in (files or {f"share/flashinfer-repack-standins/{name}": f"stand-in for {name} {version}\n"}).items():
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        if rel.startswith("bin/"):
            target.chmod(0o755)
    out = assemble_package(name, version, platform, "standin_0", Path(out_dir) / platform, files_dir=staging,
                           noarch=noarch if platform == "noarch" else None, depends=depends or [],
                           license="Apache-2.0", timestamp=FIXED_TIME)
    return Path(out.path)


def python_standin(out_dir: Path, version: str, executable: str | None = None) -> Path:
    """A ``python`` package of ``version``; its bin/python runs ``executable``, or fails when there is none."""
    body = f'exec "{executable}" "$@"\n' if executable else 'echo "stand-in python: not an interpreter" >&2\nexit 97\n'
    return standin(out_dir, "python", version, platform=STANDIN_PLATFORM, noarch=None,
                   files={"bin/python": "#!/bin/sh\n" + body})


def solve_and_install(channel: Path, specs: list[str], prefix: Path, cache: Path) -> list:
    """Solve ``specs`` offline against the ``file://`` channel and install them into ``prefix``."""
    import rattler

    async def run():
        records = await rattler.solve([Path(channel).resolve().as_uri()], specs,
                                      platforms=[STANDIN_PLATFORM, "noarch"], virtual_packages=[])
        await rattler.install(records, str(prefix), cache_dir=str(cache), show_progress=False)
        return records

    return asyncio.run(run())


def solve(channel: Path, specs: list[str]) -> list:
    import rattler

    async def run():
        return await rattler.solve([Path(channel).resolve().as_uri()], specs,
                                   platforms=[STANDIN_PLATFORM, "noarch"], virtual_packages=[])

    return asyncio.run(run())


def conda_meta(prefix: Path, name: str) -> dict:
    """The prefix record conda/rattler wrote for the installed package ``name``."""
    found = [p for p in (Path(prefix) / "conda-meta").glob(f"{name}-*.json")
             if json.loads(p.read_text())["name"] == name]
    assert len(found) == 1, f"expected one conda-meta record of {name}, found {found}"
    return json.loads(found[0].read_text())


def files_under(root: Path) -> dict[str, bytes]:
    """Every regular file below ``root``, by POSIX path relative to it."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}
