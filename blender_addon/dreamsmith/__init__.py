"""Dreamsmith for Blender: prompt -> textured 3D prop, from a Dreamsmith server over ZeroMQ.

View3D > Sidebar > Dreamsmith. The modules keep bpy apart from the network: transport.py and the
vendored client speak to the server on threads without touching bpy; session.py brings their
events to the main thread; job_inputs.py reads the scene, importer.py writes results into it;
operators.py and ui.py are what the user clicks and sees.
"""

import bpy

from . import operators, preferences, properties, session, ui

CLASSES = (*preferences.classes, *properties.classes, *operators.classes, *ui.classes)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    properties.register()
    session.start()


def unregister():
    session.stop()
    properties.unregister()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
