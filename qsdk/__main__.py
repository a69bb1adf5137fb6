from qsdk.cli import main

raise SystemExit(main())
