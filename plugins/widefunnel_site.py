"""Bootstrap every widefunnel Python model imports first (copied beside each `model.py`).

The embedded server's stub runs Python isolated (PYTHONPATH ignored) but puts the model file's folder on
`sys.path`: importing this module adds the environment's site-packages that `widefunnel serve` names in
`WIDEFUNNEL_SITE`, so `widefunnel` itself can be imported next. Unset on NVIDIA's image, where packages are
installed system-wide, and then a no-op.
"""

import os
import site
import sys

for _path in filter(None, os.environ.get("WIDEFUNNEL_SITE", "").split(os.pathsep)):
    if _path not in sys.path:
        site.addsitedir(_path)
