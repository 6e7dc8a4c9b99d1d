# Hydra's config tree, installed as the package `diffuse.conf` so `pip install .` finds it (pkg://diffuse.conf).
