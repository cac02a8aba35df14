"""Reporting: drawing figures from the CSVs of their runs, ``list``, ``reproduce`` and REPORT.md."""
