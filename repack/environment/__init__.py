"""Inspecting and fixing an installed environment, beside the pipeline.

``probe`` takes a snapshot of a target environment as its flashinfer would see it at start-up
(nothing of flashinfer imported); ``doctor`` judges that snapshot; ``install`` places verified
headers straight into an environment's cubin directory.
"""
