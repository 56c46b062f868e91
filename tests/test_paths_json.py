"""The paths.json parser of publish --channel: property-based (hypothesis) and table tests."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from repack.errors import PublishError
from repack.publish.channel import PathEntry, parse_paths_json

segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=12).filter(
    lambda s: s not in (".", ".."))
rel_path = st.lists(segment, min_size=1, max_size=5).map("/".join)
entry = st.fixed_dictionaries({
    "_path": rel_path, "path_type": st.sampled_from(["hardlink", "softlink", "directory"]),
    "sha256": st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64),
    "size_in_bytes": st.integers(min_value=0, max_value=1 << 40)})
json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                          lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                          max_leaves=12)


@given(st.lists(entry, max_size=8, unique_by=lambda e: e["_path"]))
def test_round_trip(entries):
    parsed = parse_paths_json(json.dumps({"paths": entries, "paths_version": 1}).encode(), "pkg")
    assert parsed == {e["_path"]: PathEntry(e["_path"], e["path_type"], e["sha256"].lower(), e["size_in_bytes"])
                      for e in entries}


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_publish_error(data):
    try:
        parse_paths_json(data, "pkg")
    except PublishError:
        pass


@settings(max_examples=300)
@given(json_value)
def test_any_json_parses_or_raises_publish_error(value):
    for doc in (value, {"paths": value, "paths_version": 1}, {"paths": [value], "paths_version": 1}):
        try:
            parse_paths_json(json.dumps(doc).encode(), "pkg")
        except PublishError:
            pass


@pytest.mark.parametrize("doc, message", [
    ({"paths": [], "paths_version": 2}, "paths_version 2"),
    ({"paths": {}, "paths_version": 1}, "'paths' is not a list"),
    ({"paths": [{"_path": "a", "path_type": "hardlink"}, {"_path": "a", "path_type": "hardlink"}],
      "paths_version": 1}, "'a' is listed twice"),
    ({"paths": [{"_path": "/etc/passwd", "path_type": "hardlink"}], "paths_version": 1}, "not a safe relative path"),
    ({"paths": [{"_path": "a", "path_type": "hardlink", "sha256": "xyz"}], "paths_version": 1}, "is not a sha256"),
    ({"paths": [{"_path": "a", "path_type": "hardlink", "size_in_bytes": True}], "paths_version": 1},
     "is not a size"),
    ({"paths": [{"_path": "a"}], "paths_version": 1}, "no path_type"),
])
def test_malformed_paths_json_is_refused(doc, message):
    with pytest.raises(PublishError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_paths_json(json.dumps(doc).encode(), "pkg")
