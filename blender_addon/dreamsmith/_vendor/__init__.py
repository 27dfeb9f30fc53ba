"""The server's protocol.py and client.py: the one protocol definition, shared with the server.

build_addon.py copies both files into this folder of the zip it builds. Run from the source tree
(where this folder holds no copies), the package also searches the repository's server/ folder, so
the same two files import as ``<add-on>._vendor.protocol`` and ``<add-on>._vendor.client`` and can
never drift from the server's. Only those two are imported from there: both use relative imports
and nothing beyond the standard library, pyzmq, msgpack and numpy.
"""

from pathlib import Path

_here = Path(__file__).resolve().parent
if not (_here / "protocol.py").exists():
    _server = _here.parents[2] / "server"
    if not (_server / "protocol.py").exists():
        raise ImportError(f"the Dreamsmith protocol is missing from {_here}: install the add-on from the zip "
                          "that `python build_addon.py` builds")
    __path__.append(str(_server))
