"""The ``vpdd`` console script (stub; filled in by the foundation work)."""


def main(argv=None) -> int:
    return 0
