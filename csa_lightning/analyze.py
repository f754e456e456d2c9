"""``python -m csa_lightning.analyze``: the command line of `csa_lightning.analysis` (kept under
this name, which the README, the Makefile and users' scripts call); every name of the package is
importable from here too."""

from .analysis import *  # noqa: F401,F403
from .analysis import __all__  # noqa: F401
from .analysis.cli import main
from .run_folder import resolve_checkpoint  # noqa: F401  (analyze.resolve_checkpoint, as before)

if __name__ == "__main__":
    main()
