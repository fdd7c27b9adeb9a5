"""``python -m gradaudit``: the same command as ``gradaudit``."""
from gradaudit.cli import main

if __name__ == "__main__":
    main(prog_name="gradaudit")
