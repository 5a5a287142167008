"""People-facing pictures and the HTML report: SVG charts written directly (no plotting library,
milliseconds per chart) and one self-contained HTML page."""
