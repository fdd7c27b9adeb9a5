"""The checker core: finite differences and their error bars (``numerics``), analytical derivatives
(``differentiate``), the probe test (``probe``), the checking modes (``checks``), follow-ups (``followups``),
findings and their kinds (``findings``, ``kinds``), and checks against a reference program (``parity``).
The core never imports a backend adapter or an analyzer: it sees a program only through the ``Program`` interface.
"""
