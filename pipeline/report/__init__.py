"""Stage 6, report: the data-quality summary (JSON, text, markdown) and the HTML report."""
