"""The checker core: finite differences and their error bars (``numerics``), analytical derivatives
(``differentiate``), the checks themselves (``checker``, ``parity``). The core never imports a backend adapter or an
analyzer: it sees a program only through the ``Program`` interface."""
