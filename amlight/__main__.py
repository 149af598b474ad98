import sys

from amlight.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
