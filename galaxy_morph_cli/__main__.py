"""python -m galaxy_morph_cli <command> [args...]: the same as the galaxy-morph command."""
import sys

from galaxy_morph_cli import main

sys.exit(main())
