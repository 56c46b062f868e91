"""Getting and verifying bytes.

The one HTTP transport (``transport``), the simple API of an index (``index``), zip members by
range requests (``archive``), the sources of header bytes (``sources``), the verified cache
(``cache``), whole-file downloads (``download``), digests (``digest``), and the check against
flashinfer's pins (``verify``) that alone makes a :class:`~repack.fetch.verify.Payload`;
``payload`` ties them together: Plan + sources -> verified Payload.
"""
