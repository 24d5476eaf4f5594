"""DVC stage entry points (`dvc.yaml`): each a thin `main()` around one `jepa` function.

Every stage reads the flat `params.yaml` (composed from `jepa/conf/` by Hydra), takes its
paths from the command line (dvc.yaml declares them once), and writes its outputs
atomically. No tensor code lives here.
"""
