"""Configuration: the schema (the single source of defaults, ``schema.py``), range checks
(``validate.py``), composition from ``configs/`` and overrides (``compose.py``) and a run's
identity (``identity.py``). The lowest layer: imports nothing else of the package but ``errors``.
"""
