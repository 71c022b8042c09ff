"""`nmt compare`: train candidate architectures under one budget and compare them in a report.

study.py    plan the runs from configs (all loaded and checked first), train them side by side,
            resume an interrupted study
runs.py     what a finished run folder holds: checkpoint, curves, cost, test set
measure.py  decode every model's test set in this one process: outputs, speed, alignments
stats.py    sacreBLEU scores with bootstrap confidence intervals and paired significance,
            alignment statistics, the sentences models disagree on
plots.py    matplotlib figures as PNG bytes
report.py   report.json, report.md and a self-contained report.html
"""
