"""Publishing artifacts: to an index by its upload API (``upload``), into a static simple tree
(``simple``), into a conda channel (``channel``), and an air-gapped bundle of all of them
(``bundle``).  ``distfile`` checks a wheel before it leaves the machine.
"""
