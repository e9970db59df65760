"""Entry script of the PyInstaller bundle (the same as ``quantdesk`` / ``python -m desktop``)."""

import multiprocessing
import sys

from desktop.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()  # child processes of the frozen app re-enter here
    sys.exit(main())
