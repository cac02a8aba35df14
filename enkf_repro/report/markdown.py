"""The Markdown the package writes, from data computed elsewhere: the table of ``compare``
(``report/comparison.py``). Pure functions of their arguments: nothing is read or measured here.
"""

from __future__ import annotations

import pandas as pd

from .comparison import Comparison
from .select import value_text


def _fmt(x: float) -> str:
    return "nan" if pd.isna(x) else f"{x:.4g}"


def comparison_markdown(c: Comparison) -> str:
    """The table ``compare`` writes and prints: per group the mean and std of each run's last
    value, the runs, how many finished and the last iteration, then the notes."""
    table = c.table
    runs, done = int(table["runs"].sum()), int(table["finished"].sum())
    where = c.where_text
    head = (f"{c.metric} at each run's last logged iteration: mean and std (ddof=0) over the runs of each "
            f"group; {runs} runs ({done} finished) under {c.root}" + (f", where {where}" if where else ""))
    cols = c.by + ["mean", "std", "runs", "finished", "last iteration"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for _, r in table.iterrows():
        it = (str(r["last_iteration"]) if r["last_iteration"] == r["last_iteration_min"]
              else f"{r['last_iteration_min']}-{r['last_iteration']}")
        cells = [value_text(r[k]) for k in c.by] + [_fmt(r["final_mean"]), _fmt(r["final_std"]),
                                                   str(r["runs"]), str(r["finished"]), it]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"Note: {n}; add a key to by= or where= to separate them." for n in c.notes]
    return "\n".join(lines).rstrip() + "\n"

