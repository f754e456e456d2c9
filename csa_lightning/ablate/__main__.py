"""python -m csa_lightning.ablate: see the package's docstring."""

from .runner import main

if __name__ == "__main__":
    main()
