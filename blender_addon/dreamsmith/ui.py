"""The sidebar panel: View3D > Sidebar > Dreamsmith."""

import textwrap

import bpy

from . import operators, properties, session

MODE_OPERATORS = {"GENERATE": operators.DREAMSMITH_OT_generate, "TEXTURE": operators.DREAMSMITH_OT_texture_selected,
                  "SKETCH": operators.DREAMSMITH_OT_sketch_selected}
STATE_ICONS = {"running": "SORTTIME", "imported": "CHECKMARK", "cancelled": "CANCEL"}  # other ends: ERROR
PREVIEW_SCALE = 8.0
PIXELS_PER_CHARACTER = 7  # rough width of the interface font, for wrapping long messages
RECENT_SHOWN = 10


def wrapped_label(layout, context, text: str, icon: str = "NONE") -> None:
    """Labels do not wrap by themselves: split ``text`` to the sidebar's width."""
    width = context.region.width if context.region is not None else 300
    lines = textwrap.wrap(text, max(20, width // PIXELS_PER_CHARACTER)) or [""]
    column = layout.column(align=True)
    for index, line in enumerate(lines):
        column.label(text=line, icon=icon if index == 0 else "BLANK1")


def draw_server_status(layout, context, current: session.Session, kind: str) -> None:
    status = current.server
    address = current.settings().address
    column = layout.column()
    column.alert = not status.connected
    if not status.connected:
        wrapped_label(column, context, f"Not connected: {status.text}", icon="UNLINKED")
        return
    wrapped_label(column, context, f"Connected to {address}: {status.text}", icon="LINKED")
    if kind not in status.kinds:
        # The job is still sent (the server says why it refuses it); this warns before the wait.
        wrapped_label(column, context, f"This server does not run '{kind}' jobs yet", icon="INFO")


def draw_settings(layout, settings: properties.DreamsmithSettings) -> None:
    layout.column().prop(settings, "mode", expand=True)
    column = layout.column()
    column.prop(settings, "prompt", icon="TEXT")
    column.prop(settings, "negative_prompt", text="Negative", icon="REMOVE")
    column.prop(settings, "strict_prompt")
    column.prop(settings, "seed")
    column.prop(settings, "steps")
    column.prop(settings, "guidance")
    column.prop(settings, "shaded_texture")
    layout.row().prop(settings, "preset", expand=True)
    layout.prop(settings, "camera_collection")


def draw_active_job(layout, current: session.Session) -> None:
    job = current.active
    text = f"{job.phase} {job.step}/{job.total}" if job.total else job.phase
    layout.progress(factor=job.factor, type="BAR", text=text)
    icon = current.preview_icon()
    if icon:
        layout.template_icon(icon_value=icon, scale=PREVIEW_SCALE)
    layout.operator("dreamsmith.cancel", icon="CANCEL")


class VIEW3D_PT_dreamsmith(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Dreamsmith"
    bl_label = "Dreamsmith"

    def draw(self, context):
        layout = self.layout
        current = session.current()
        if current is None:
            layout.label(text="The Dreamsmith add-on is not running", icon="ERROR")
            return
        settings = properties.get(context)
        operator = MODE_OPERATORS[settings.mode]
        draw_server_status(layout, context, current, operator.kind)
        draw_settings(layout, settings)
        if current.active is not None:
            draw_active_job(layout, current)
        else:
            layout.operator(operator.bl_idname, icon="PLAY")
        for warning in current.warnings:
            wrapped_label(layout.box(), context, warning, icon="INFO")
        if current.last_error:
            box = layout.box()
            box.alert = True
            wrapped_label(box, context, current.last_error, icon="ERROR")


class VIEW3D_PT_dreamsmith_recent(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Dreamsmith"
    bl_label = "Recent Jobs"
    bl_parent_id = "VIEW3D_PT_dreamsmith"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        current = session.current()
        if current is None or not current.recent.records:
            self.layout.label(text="No jobs yet")
            return
        for record in current.recent.records[:RECENT_SHOWN]:
            row = self.layout.row(align=True)
            text = f"{record.label}: {record.message}" if record.message else record.label
            row.label(text=text, icon=STATE_ICONS.get(record.state, "ERROR"))
            if record.reattachable:
                row.operator("dreamsmith.attach", text="", icon="IMPORT").job_id = record.job_id
            row.operator("dreamsmith.forget_job", text="", icon="X").job_id = record.job_id


classes = (VIEW3D_PT_dreamsmith, VIEW3D_PT_dreamsmith_recent)
