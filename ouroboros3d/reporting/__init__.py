"""Results to tables, figures and the report.

``tables`` (Tables 2 and 3), ``figures`` (Figure 3's denoising steps, learning curves),
``report`` (paper/report.md from its template).
"""
