"""Keep the tests out of the real home: HOME, XDG_* and FLASHINFER_WORKSPACE_BASE point into a
temporary home for the whole run, and anything new under the real home afterwards is reported.

The machine's pip and uv configuration is copied into the temporary home (where the local CPU
build of torch comes from is part of the machine, not of the tests); ``.netrc`` is not, so that
credential tests see only what they set up.  The wheel store (``$FLASHINFER_REPACK_TEST_STORE``)
keeps its explicit path and is the one place under the real home that tests may write; the default store is
never walked either, even when the variable names another: the real tier hard-links its venv base from
there into temporary venvs, and removing those (pytest's own clean-up of old temporary dirs) changes the
stored files' ctime.
``FLASHINFER_REPACK_TEST_HOME_IGNORE`` (``:``-separated paths relative to the home) names places
that other processes on a shared machine write while the tests run; toolchain directories
(``TOOLCHAINS``) are not walked.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

VARIABLES = ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME",
             "FLASHINFER_WORKSPACE_BASE")
COPIED_CONFIG = (".config/pip/pip.conf", ".pip/pip.conf", ".config/uv/uv.toml")
#: toolchains installed under the home: hundreds of thousands of files that no test writes; walking
#: them would cost more than the fast tier's slowest test
TOOLCHAINS = (".pyenv", ".rustup", ".cargo", ".m2", ".nvm", ".sdkman", ".gradle")


class Isolation:
    def __init__(self, *stores: Path) -> None:
        self.real_home = Path(os.path.expanduser("~")).resolve()
        self.stores = {Path(store).resolve() for store in stores}
        self.saved: dict[str, str | None] = {}
        self.root: Path | None = None
        self.started_ns = 0

    def start(self) -> Isolation:
        self.started_ns = time.time_ns() - 1_000_000_000  # coarse file-system clocks
        self.root = Path(tempfile.mkdtemp(prefix="flashinfer-repack-home-"))
        home = self.root / "home"
        values = {"HOME": home, "XDG_CACHE_HOME": home / ".cache", "XDG_CONFIG_HOME": home / ".config",
                  "XDG_DATA_HOME": home / ".local/share", "XDG_STATE_HOME": home / ".local/state",
                  "FLASHINFER_WORKSPACE_BASE": self.root / "workspace"}
        for name, path in values.items():
            path.mkdir(parents=True, exist_ok=True)
            self.saved[name] = os.environ.get(name)
            os.environ[name] = str(path)
        os.chmod(self.root, 0o755)  # unprivileged runs of flashinfer read under it
        os.chmod(home, 0o755)
        for rel in COPIED_CONFIG:
            if (self.real_home / rel).is_file():
                (home / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.real_home / rel, home / rel)
        return self

    def stop(self) -> list[str]:
        """Restore the environment, remove the temporary home; return what was written under the real one."""
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        return self.written()

    def written(self) -> list[str]:
        ignored = set(self.stores) | {(self.real_home / p).resolve() for p in
                                  os.environ.get("FLASHINFER_REPACK_TEST_HOME_IGNORE", "").split(":") if p}
        ignored |= {(self.real_home / p).resolve() for p in TOOLCHAINS}
        found = []
        for top, dirs, files in os.walk(self.real_home):
            dirs[:] = [d for d in dirs if Path(top, d).resolve() not in ignored]
            for name in files:
                path = Path(top, name)
                try:
                    changed = path.lstat().st_ctime_ns >= self.started_ns
                except OSError:
                    continue
                if changed:
                    found.append(str(path.relative_to(self.real_home)))
        return sorted(found)
