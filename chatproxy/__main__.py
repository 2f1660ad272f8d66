from chatproxy.cli import main

raise SystemExit(main())
