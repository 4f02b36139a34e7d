"""``python -m al_det`` and ``torchrun -m al_det``: the entry point of the ``al-det`` command."""

from al_det.cli import main

if __name__ == "__main__":
    main()
