"""Writing packages: a verified Payload -> an Artifact on disk.

The wheel (``wheel``), the conda package's metadata (``conda``) and its containers
(``conda_archive``), wheel -> conda conversion for bundles (``convert``), and what every builder
hands on (``artifact``).  Every writer is deterministic: same inputs, same bytes.
"""
