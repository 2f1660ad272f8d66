"""`python -m chatproxy`: the command line (cli.py)."""

from chatproxy.cli import main

raise SystemExit(main())
