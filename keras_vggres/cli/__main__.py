"""`python -m keras_vggres.cli` runs the `keras-vggres` command."""

import sys

from keras_vggres.cli import main

sys.exit(main())
