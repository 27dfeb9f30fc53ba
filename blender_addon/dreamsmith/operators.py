"""The operators behind the panel's buttons. Each gathers its inputs on the main thread and hands the
job to the session; the work itself runs on a thread (or, with ``wait``, blocks until it is done)."""

import bpy
from bpy.props import BoolProperty, StringProperty

from . import job_inputs, properties, session
from .job_inputs import InputError
from .transport import JobOrder

CAMERAS_PARAM = "cameras"
WORLD_ORIGIN = (0.0, 0.0, 0.0)


def camera_params(context: bpy.types.Context, origin=WORLD_ORIGIN) -> dict:
    """The camera rig (possibly empty), relative to ``origin``, as every kind's submit params take it."""
    return {CAMERAS_PARAM: job_inputs.camera_rig(context.scene, properties.get(context).camera_collection, origin)}


def mesh_arrays(mesh: job_inputs.MeshInput) -> dict:
    arrays = {"vertices": mesh.vertices, "faces": mesh.faces}
    if mesh.uvs is not None:
        arrays["uvs"] = mesh.uvs
    return arrays


def report_outcome(operator: bpy.types.Operator, outcome: session.Outcome | None) -> set:
    if outcome is None:
        operator.report({"INFO"}, "Dreamsmith job sent; follow it in the sidebar")
        return {"FINISHED"}
    operator.report({"INFO"} if outcome.succeeded else {"ERROR"}, outcome.message)
    return {"FINISHED"} if outcome.succeeded else {"CANCELLED"}


def busy_reason() -> str:
    current = session.current()
    if current is None:
        return "The Dreamsmith add-on is not running"
    if current.active is not None:
        return "A Dreamsmith job is running: cancel it or wait for it to finish"
    return ""


class WaitOption:
    wait: BoolProperty(
        name="Wait",
        description="Run the job to the end before returning, for scripts; background mode always waits, "
                    "as its timers never run",
        default=False, options={"SKIP_SAVE", "HIDDEN"})

    def blocking(self) -> bool:
        return self.wait or bpy.app.background


class JobOperator(WaitOption):
    """What the three job operators share: poll reasons, submitting."""

    kind = ""  # the protocol's job kind
    bl_options = {"REGISTER"}

    @classmethod
    def unavailable(cls, context: bpy.types.Context) -> str:
        """Why the operator cannot run now, or an empty string."""
        if not properties.get(context).prompt.strip():
            return "Type a prompt first"
        return busy_reason()

    @classmethod
    def poll(cls, context):
        reason = cls.unavailable(context)
        if reason:
            cls.poll_message_set(reason)
        return not reason

    def order(self, context: bpy.types.Context) -> tuple[JobOrder, str]:
        """The job to submit and the target object's name (see JobRecord.target)."""
        raise NotImplementedError

    def origin(self, context: bpy.types.Context) -> tuple | None:
        """Where a new prop goes, for a kind that makes one in a frame of its own (see JobRecord.origin);
        the rig is sent relative to it. None: the job works in world space."""
        return None

    def execute(self, context):
        settings = properties.get(context)
        origin = self.origin(context)
        try:
            order, target = self.order(context)
            order.params.update(settings.job_params(), **camera_params(context, origin or WORLD_ORIGIN))
        except InputError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        outcome = session.current().run(order, settings.prompt.strip(), target, wait=self.blocking(), origin=origin)
        return report_outcome(self, outcome)


class SelectedMeshJobOperator(JobOperator):
    @classmethod
    def unavailable(cls, context):
        obj = context.active_object
        if obj is None or obj.type != "MESH":
            return "Select a mesh object first"
        if obj.mode != "OBJECT":
            return "Switch to Object Mode first"
        if not obj.data.polygons:
            return f"'{obj.name}' has no faces"
        return super().unavailable(context)

    def order(self, context):
        obj = context.active_object
        return JobOrder(self.kind, inputs=mesh_arrays(job_inputs.mesh_input(obj))), obj.name


class DREAMSMITH_OT_generate(JobOperator, bpy.types.Operator):
    """Make a new textured object from the prompt, at the 3D cursor"""
    bl_idname = "dreamsmith.generate"
    bl_label = "Generate"
    kind = "generate"

    def order(self, context):
        return JobOrder(self.kind), ""

    def origin(self, context):
        # The engine makes the prop at the origin of its frame and the add-on puts it at the cursor,
        # so the cursor is that origin, for the rig now and for placing the result later.
        return tuple(context.scene.cursor.location)


class DREAMSMITH_OT_texture_selected(SelectedMeshJobOperator, bpy.types.Operator):
    """Paint a texture onto the selected mesh from the prompt, keeping its shape"""
    bl_idname = "dreamsmith.texture_selected"
    bl_label = "Texture Selected"
    kind = "paint"


class DREAMSMITH_OT_sketch_selected(SelectedMeshJobOperator, bpy.types.Operator):
    """Refine the selected rough mesh into a textured object from the prompt; the sketch is hidden"""
    bl_idname = "dreamsmith.sketch_selected"
    bl_label = "Sketch from Selected"
    kind = "sketch"


class DREAMSMITH_OT_cancel(bpy.types.Operator):
    """Stop the running Dreamsmith job"""
    bl_idname = "dreamsmith.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        current = session.current()
        if current is None or current.active is None:
            cls.poll_message_set("No Dreamsmith job is running")
            return False
        return True

    def execute(self, context):
        session.current().cancel()
        self.report({"INFO"}, "Dreamsmith: asked the server to stop the job")
        return {"FINISHED"}


class RecentJobOperator:
    job_id: StringProperty(name="Job", description="Server job id", options={"SKIP_SAVE"})

    def record(self):
        current = session.current()
        return current.recent.get(self.job_id) if current is not None else None


class DREAMSMITH_OT_attach(RecentJobOperator, WaitOption, bpy.types.Operator):
    """Follow this job again and bring its result into the scene when it is done (also after a restart)"""
    bl_idname = "dreamsmith.attach"
    bl_label = "Attach and Fetch"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        reason = busy_reason()
        if reason:
            cls.poll_message_set(reason)
        return not reason

    def execute(self, context):
        record = self.record()
        if record is None:
            self.report({"ERROR"}, f"Dreamsmith: no recent job {self.job_id!r}")
            return {"CANCELLED"}
        outcome = session.current().run(JobOrder(record.kind, job_id=record.job_id), record.label, record.target,
                                        wait=self.blocking(), origin=record.origin)
        return report_outcome(self, outcome)


class DREAMSMITH_OT_forget_job(RecentJobOperator, bpy.types.Operator):
    """Remove this job from the recent jobs list (its result stays on the server)"""
    bl_idname = "dreamsmith.forget_job"
    bl_label = "Forget Job"
    bl_options = {"REGISTER"}

    def execute(self, context):
        if self.record() is not None:
            session.current().recent.remove(self.job_id)
        return {"FINISHED"}


classes = (DREAMSMITH_OT_generate, DREAMSMITH_OT_texture_selected, DREAMSMITH_OT_sketch_selected,
           DREAMSMITH_OT_cancel, DREAMSMITH_OT_attach, DREAMSMITH_OT_forget_job)
