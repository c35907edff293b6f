"""Per-chapter logic of the book: which runs a chapter needs, what it measures
on them, and the verdicts of its findings.  Notebooks call these and plot."""
