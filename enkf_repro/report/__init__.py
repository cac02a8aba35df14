"""Reporting, one job per module: which runs (select.py), what they show (comparison.py: runs
grouped by config keys; findings.py: the paper's numbers and claims read off a figure's runs),
the Markdown written from that (markdown.py), and the library entries behind the command line:
``plot_figure`` (render.py), ``compare`` (compare.py), ``figure_table`` (listing.py: ``list``) and
``reproduce`` (reproduce.py: run, plot, REPORT.md). The drawing primitives are
``experiments/draw.py``'s."""
