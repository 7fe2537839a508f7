"""Noise schedule nodes: the sigmas a solver runs, or a user's own, as ComfyUI SIGMAS with a chart of them."""

from __future__ import annotations

from ..samplers.loop import validate_sampling
from ..samplers.schedulers import SCHEDULES, SOLVERS, parse_sigmas, schedule_sigmas
from ..samplers.sigma_plot import plot_sigmas

SCHEDULE_TYPES = ("SIGMAS", "IMAGE")
SCHEDULE_NAMES = ("sigmas", "plot")
SCHEDULE_TOOLTIPS = ("Noise levels from 1 (noise) to 0 (clean), one before each step and the final 0: ComfyUI's "
                     "SIGMAS.", "A chart of the schedule.")


class FlowSigmas:
    DESCRIPTION = "The exact noise levels a Sana / Wan sampler with these settings runs, and a chart of them."
    CATEGORY = "sampling/schedules"
    FUNCTION = "schedule"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = SCHEDULE_TYPES, SCHEDULE_NAMES, SCHEDULE_TOOLTIPS

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "solver": (list(SOLVERS), {"default": "flow_euler", "tooltip": "The solver whose spacing to show."}),
            "shift": ("FLOAT", {"default": 3.0, "min": 0.01, "max": 100.0, "step": 0.1,
                                "tooltip": "Flow shift: higher spends more steps at high noise (Sana 3.0, Wan 5.0)."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 1000, "step": 1, "tooltip": "Sampling steps."}),
            "schedule": (list(SCHEDULES), {"default": "default", "tooltip":
                         "default: the solver's own spacing; simple: ComfyUI's simple scheduler (not flow_dpmpp_2m)."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                  "tooltip": "Below 1: the last `steps` steps of a longer schedule (img2img)."}),
        }}

    def schedule(self, solver, shift, steps, schedule, denoise):
        validate_sampling(steps, cfg=1.0, denoise=denoise, shift=shift)  # no guidance in a schedule: cfg is neutral
        sigmas = schedule_sigmas(solver, shift, steps, schedule, denoise)
        title = f"{solver}, shift {shift:g}, {steps} steps, {schedule}"
        if denoise < 1:
            title += f", denoise {denoise:g}"
        return (sigmas, plot_sigmas(sigmas, title))


class CustomSigmas:
    DESCRIPTION = ("Your own noise levels, used as written (already shifted, like ComfyUI's SIGMAS); a final 0 is "
                   "added when missing. Works with flow_euler, flow_heun and flow_unipc.")
    CATEGORY = "sampling/schedules"
    FUNCTION = "schedule"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = SCHEDULE_TYPES, SCHEDULE_NAMES, SCHEDULE_TOOLTIPS

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sigmas": ("STRING", {"default": "1.0, 0.75, 0.5, 0.25, 0", "multiline": False, "tooltip":
                       "Strictly decreasing numbers in [0, 1], separated by commas or spaces; 1 = pure noise."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, sigmas):
        """Refuse a malformed list at queue time, with what is wrong."""
        if sigmas is None:  # a linked input is only known at run time
            return True
        try:
            parse_sigmas(sigmas)
        except ValueError as e:
            return str(e)
        return True

    def schedule(self, sigmas):
        values = parse_sigmas(sigmas)
        return (values, plot_sigmas(values, f"custom, {len(values) - 1} steps"))


NODE_CLASS_MAPPINGS = {"FlowSigmas": FlowSigmas, "CustomSigmas": CustomSigmas}
NODE_DISPLAY_NAME_MAPPINGS = {"FlowSigmas": "Flow Sigmas (Sana / Wan)", "CustomSigmas": "Custom Sigmas"}
