"""What every command-line entry point shares: user errors become one line and exit 2."""

import sys

from trainables.errors import UserInputError

USAGE_ERROR = 2


def run_main(main, argv=None) -> None:
    """Call `main(argv)`; a UserInputError prints `error: <message>` to stderr and exits 2."""
    try:
        code = main(argv)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USAGE_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
