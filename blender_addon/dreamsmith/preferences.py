"""Add-on preferences: where the server is and how to authenticate to it."""

import bpy
from bpy.props import FloatProperty, StringProperty

from . import session
from ._vendor import protocol


def reconnect(_preferences, _context) -> None:
    if (current := session.current()) is not None:
        current.preferences_changed()


class DreamsmithPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    server_address: StringProperty(
        name="Server Address",
        description="ZeroMQ address of the Dreamsmith server (python -m server --bind ADDRESS)",
        default=protocol.DEFAULT_ADDRESS, update=reconnect,
    )
    server_public_key: StringProperty(
        name="Server Public Key",
        description="CURVE public key file of the server; leave empty for a server without CURVE",
        subtype="FILE_PATH", update=reconnect,
    )
    client_secret_key: StringProperty(
        name="Client Secret Key",
        description="This Blender's CURVE secret key file (zmq.auth format); needed when a server key is set",
        subtype="FILE_PATH", update=reconnect,
    )
    timeout: FloatProperty(
        name="Reply Timeout",
        description="Seconds to wait for the server to answer a request before reporting it unreachable",
        default=1.0, min=0.2, max=60.0, unit="TIME_ABSOLUTE", update=reconnect,
    )

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "server_address")
        layout.prop(self, "timeout")
        box = layout.box()
        box.label(text="CURVE encryption (optional)")
        box.prop(self, "server_public_key")
        box.prop(self, "client_secret_key")


classes = (DreamsmithPreferences,)
