from linesight.cli import main

raise SystemExit(main())
