from codeb_tui.cli import main

raise SystemExit(main())
