"""A target file that exits while it is imported."""
import sys

sys.exit(0)


def case():
    raise AssertionError("never reached")
