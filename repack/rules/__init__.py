"""Reading flashinfer's code and its rules.

What a flashinfer-python version needs (a :class:`~repack.rules.plan.Plan`: artifact path, pinned
checksum, headers, runtime path, marker), read statically from that version's own code, never
imported; the plans shipped for the affected versions (``plans.json``); and where the code is read
from (an installed distribution, a wheel on disk, an index).
"""
