"""Renderers of reports: plain text (``str(report)``, pipes, suite records), rich (terminals), JSON, JUnit XML and
an HTML page (a jinja2 template). Each takes the data model of :mod:`gradaudit.report` or suite records and
returns or writes text; none of them decides a verdict."""
