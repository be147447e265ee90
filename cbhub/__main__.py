from cbhub.cli import main

raise SystemExit(main())
