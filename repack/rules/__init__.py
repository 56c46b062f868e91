"""Reading flashinfer's code and its rules.

What a flashinfer-python version needs and how its runtime finds it (a
:class:`~repack.rules.plan.Plan`: artifact path, pinned checksum, headers, runtime path, marker
name and content, how FLASHINFER_CUBIN_DIR is picked), read statically from that version's own
code by the one reader (``reader.py``, over ``scope.py``'s name resolution), never imported; it
answers "needs", "does not need, because ..." or "cannot tell: file:line ...". Also the plans
shipped for the affected versions (``plans.json``), where the code is read from, and the check
of a shipped plan against the code at hand (``resolve.py``).
"""
