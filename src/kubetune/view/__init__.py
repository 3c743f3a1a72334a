"""How a FineTuneJob is shown to people: pure functions from the status model to text lines.

`kubetune run` (its `report.md`) and `kubetune status` (the terminal) render the same report from the same
function, so a job reads the same on a laptop and in a cluster. Nothing here does I/O, reads the clock
(`now` is passed in), talks to Kubernetes or draws with a plotting library (an import-linter contract in
pyproject.toml keeps it so).

- report.py  `report_lines(JobReport)`: phase and conditions, progress and ETA, latest losses, restarts
             and their reasons, the loss chart, the approaches table and verdict, the data report and the
             job's recent events; `progress_line(status)`, the one-line summary
- chart.py   sparklines of loss series (`LossSeries`), for terminals and Markdown code blocks
"""
