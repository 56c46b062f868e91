"""Regenerate repack/rules/plans.json from the real wheels on an index (maintainers only).

    python scripts/ship_plans.py 0.6.5 0.6.6 0.6.7

Each plan is derived from flashinfer-python's code of that version (read by
Range requests, never imported); every header's sha256 is the line of the
pinned checksums.txt, read from the flashinfer-cubin wheel of that version,
that flashinfer's runtime itself would pick.  The test suite re-derives and
compares.
"""

import json
import sys
from dataclasses import replace
from pathlib import Path

from repack.fetch.cache import Cache
from repack.fetch.index import PYPI
from repack.fetch.sources import IndexWheel
from repack.fetch.transport import Transport
from repack.fetch.verify import check_checksums_file, expected_hashes
from repack.rules.resolve import plan_from_index


def main(versions: list[str]) -> None:
    transport = Transport()
    plans = {}
    for version in versions:
        plan = plan_from_index(transport, PYPI, version)
        checksums = IndexWheel(transport, PYPI, version, Cache(None)).read([plan.checksums_path])
        hashes = expected_hashes(plan, check_checksums_file(plan, checksums[plan.checksums_path]))
        data = replace(plan, header_sha256=hashes).to_json()
        for derived in ("marker_bytes", "marker_size", "checksums_path"):
            data.pop(derived)
        plans[version] = data
    out = Path(__file__).resolve().parents[1] / "repack" / "rules" / "plans.json"
    out.write_text(json.dumps({"plans": plans}, indent=2) + "\n")
    print(f"wrote {out.name}: {', '.join(plans)}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["0.6.5", "0.6.6", "0.6.7"])
