"""rosbridge v2: pure protocol and message codecs, an asyncio client and a compatible server.

Import the submodules directly (``from crane_x7_vla.bridge.client import RosbridgeClient``); this package
file stays empty of imports so that ``protocol``/``messages`` users do not pull in websockets.
"""
