from cinevox.cli import main

raise SystemExit(main())
