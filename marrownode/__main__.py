from marrownode.cli import main

raise SystemExit(main())
