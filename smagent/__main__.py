from smagent.cli import main

raise SystemExit(main())
