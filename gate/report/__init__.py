"""People-facing outputs: the self-contained HTML report with matplotlib charts (Jinja2 template),
the JUnit view of a decision for CI servers, and the one-line summary written on model versions."""
