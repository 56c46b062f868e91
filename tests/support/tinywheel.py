"""Small, valid wheels made at test time (METADATA, WHEEL, RECORD), and ways to damage them."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def make_wheel(out_dir: Path, name: str, version: str, *, requires_python: str | None = None,
               requires: tuple[str, ...] = (), files: dict[str, bytes] | None = None) -> Path:
    """A pure wheel ``name==version`` holding ``files`` (default: one module)."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info/"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", f"Summary: test wheel {name}"]
    meta += [f"Requires-Python: {requires_python}"] if requires_python else []
    meta += [f"Requires-Dist: {r}" for r in requires]
    members = dict(files or {f"{dist}/__init__.py": f"VERSION = {version!r}\n".encode()})
    members[info + "METADATA"] = ("\n".join(meta) + "\n\nA wheel made by the tests.\n").encode()
    members[info + "WHEEL"] = b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = "".join(f"{n},sha256={_b64(d)},{len(d)}\n" for n, d in members.items()) + f"{info}RECORD,,\n"
    members[info + "RECORD"] = record.encode()
    path = Path(out_dir) / f"{dist}-{version}-py3-none-any.whl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, d in members.items():
            zf.writestr(zipfile.ZipInfo(n, (2020, 1, 1, 0, 0, 0)), d)
    return path


def tamper(wheel: Path, out: Path, member_suffix: str) -> Path:
    """A copy of ``wheel`` in which one member's content changed but RECORD did not (a well-formed zip)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        hit = False
        for info in src.infolist():
            data = src.read(info)
            if not hit and info.filename.endswith(member_suffix):
                data, hit = data + b"\n// altered\n", True
            dst.writestr(info, data)
    assert hit, f"{wheel.name} has no member ending in {member_suffix}"
    return out


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
