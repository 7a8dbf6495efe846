from marrownode.cli import main

# Guarded: analysis workers are spawned processes that re-import the main module.
if __name__ == "__main__":
    raise SystemExit(main())
