"""Payload -> the ``flashinfer-cubin-headers`` wheel, byte for byte reproducible.

Entries sorted, one timestamp (``SOURCE_DATE_EPOCH`` as the caller passes it),
normalised permissions, fixed compression, RECORD last; written beside the
target and renamed into place.  The SBOM (where the bytes came from) lies in
``.dist-info/sboms/`` (PEP 770).  Never ``flashinfer_cubin/__init__.py``: a
headers-only ``flashinfer_cubin`` package would shadow flashinfer-cubin.
"""

from __future__ import annotations

import hashlib
import io
import time
import zipfile
from pathlib import Path

from repack import __version__
from repack.build.artifact import DEFAULT_EPOCH, DIST_NAME, SUMMARY, Artifact
from repack.build.sbom import SBOM_DIR, SBOM_NAME, sbom_bytes
from repack.errors import BuildError, InputError
from repack.fetch.verify import Payload
from repack.fs import atomic_write, not_a_folder_hint
from repack.wheelfile import urlsafe_b64

PACKAGE_ROOT = "flashinfer_cubin/cubins/"
TAG = "py3-none-any"


def wheel_filename(version: str) -> str:
    return f"{DIST_NAME.replace('-', '_')}-{version}-{TAG}.whl"


def metadata_text(payload: Payload) -> str:
    plan = payload.plan
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {DIST_NAME}",
        f"Version: {plan.version}",
        "Summary: " + SUMMARY.format(version=plan.version),
        "License: Apache-2.0",
        f"Requires-Dist: flashinfer-cubin=={plan.version}",
        f"Requires-Dist: flashinfer-python=={plan.version}",
    ]
    if plan.requires_python:
        lines.append(f"Requires-Python: {plan.requires_python}")
    lines.append("Description-Content-Type: text/markdown")
    return "\n".join(lines) + "\n\n" + description(payload)


def description(payload: Payload) -> str:
    plan = payload.plan
    return f"""# {DIST_NAME} {plan.version}

flashinfer-python {plan.version} looks at start-up for {len(plan.headers)} TRT-LLM BMM export headers in
`FLASHINFER_CUBIN_DIR/{plan.dest_dir}/`, a path that no FlashInfer package ships, and downloads
them from NVIDIA's artifactory on every fresh install. Offline, or when the artifactory answers 403,
start-up fails after about 35 seconds with `AssertionError: BatchedGemmEnums.h not found`.

This package installs those headers, byte-identical to the ones in flashinfer-cubin {plan.version}
and verified against the checksums that flashinfer-python pins (checksums.txt sha256
`{plan.checksums_sha256}`), together with the exact `{plan.marker_name}` marker, at
`site-packages/{PACKAGE_ROOT}{plan.dest_dir}/`. With flashinfer-cubin installed, that is where
flashinfer looks, so it starts with zero downloads and zero writes.

Install it beside the same versions of flashinfer-python and flashinfer-cubin (it requires both,
exactly): `pip install flashinfer-python=={plan.version} flashinfer-cubin=={plan.version} {DIST_NAME}=={plan.version}`.
Built by flashinfer-repack; the files are those of flashinfer-cubin {plan.version}, checked byte for byte.
"""


def build_wheel(payload: Payload, out_dir: Path, epoch: int | None = None) -> Artifact:
    """Write the wheel into ``out_dir`` and return it."""
    data = wheel_bytes(payload, DEFAULT_EPOCH if epoch is None else epoch)
    path = Path(out_dir) / wheel_filename(payload.plan.version)
    try:
        atomic_write(path, data)
    except OSError as exc:
        blocked = not_a_folder_hint(path.parent, exc)
        if blocked:  # a mistake in the command line, as a file where -o's folder should be
            raise InputError(f"cannot write {path}: {blocked}",
                             "give an output folder (it is created if missing) whose parents are folders",
                             path=str(path.parent)) from exc
        raise BuildError(f"cannot write {path}: {exc.strerror}", "choose an output directory you can write") from exc
    return Artifact("wheel", path, hashlib.sha256(data).hexdigest(), len(data))


def wheel_bytes(payload: Payload, epoch: int) -> bytes:
    plan = payload.plan
    dist_info = f"{DIST_NAME.replace('-', '_')}-{plan.version}.dist-info/"
    files = [(PACKAGE_ROOT + f.path, f.data) for f in payload.files]
    files.append((dist_info + "METADATA", metadata_text(payload).encode("utf-8")))
    files.append((dist_info + SBOM_DIR + SBOM_NAME, sbom_bytes(payload, PACKAGE_ROOT)))  # PEP 770
    files.append((dist_info + "WHEEL", (f"Wheel-Version: 1.0\nGenerator: flashinfer-repack {__version__}\n"
                                         f"Root-Is-Purelib: true\nTag: {TAG}\n").encode()))
    if any(name.startswith("flashinfer_cubin/__init__") for name, _ in files):
        raise BuildError("refusing to ship flashinfer_cubin/__init__.py", "it would shadow flashinfer-cubin")
    files.sort()
    record = "".join(f"{name},sha256={_urlsafe(data)},{len(data)}\n" for name, data in files)
    record += f"{dist_info}RECORD,,\n"
    files.append((dist_info + "RECORD", record.encode()))
    date_time = time.gmtime(max(epoch, DEFAULT_EPOCH))[:6]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=date_time)
            info.external_attr = (0o100644 & 0xFFFF) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            zf.writestr(info, data, compresslevel=9)
    return buf.getvalue()


def _urlsafe(data: bytes) -> str:
    return urlsafe_b64(hashlib.sha256(data).digest())
