"""``TSCL_FAULT=CODE:WHERE`` in the environment installs an I/O fault (see tscl_faultshim) at interpreter start."""
import os

if ":" in os.environ.get("TSCL_FAULT", ""):
    import tscl_faultshim

    tscl_faultshim.install(*os.environ["TSCL_FAULT"].split(":", 1))
